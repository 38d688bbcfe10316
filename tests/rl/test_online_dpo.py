"""Iterative DPO: pairs by hand, rounds labelled by a reward model or by the policy's own
implicit reward (SPA), SELM's optimism term, prompts from a file with a Hugging Face policy
and a reward model trained on files, its checks, and exact resume after SIGKILL."""

import json
import os

import jax
import kill_resume
import numpy as np
import pytest
from flax import nnx
from test_dpo import tiny_config
from test_ppo_files import build_world

from rmjax.configs import train_rm
from rmjax.models import hf_io
from rmjax.rl import build, dpo, online_dpo
from rmjax.rm import trainer as rm_trainer


def test_pairs_best_against_worst_and_all_pairs_by_hand():
  scores = np.array([[0.1, 0.9, 0.5], [2.0, 2.0, 2.0]])
  chosen, rejected, weight = online_dpo.pair_indices(scores, "best_worst")
  np.testing.assert_array_equal(chosen, [1, 3])
  np.testing.assert_array_equal(rejected, [0, 3])
  np.testing.assert_array_equal(weight, [1.0, 0.0])  # the second prompt's samples tie
  chosen, rejected, weight = online_dpo.pair_indices(scores, "all")
  # prompt 0: (0, 1) -> 1 over 0, (0, 2) -> 2 over 0, (1, 2) -> 1 over 2; prompt 1 ties
  np.testing.assert_array_equal(chosen[:3], [1, 2, 1])
  np.testing.assert_array_equal(rejected[:3], [0, 0, 2])
  np.testing.assert_array_equal(weight, [1, 1, 1, 0, 0, 0])
  with pytest.raises(ValueError, match="dpo.online.pairs='top'"):
    online_dpo.pair_indices(scores, "top")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny train-rm run (the labeller) and a tiny dpo run (SPA's start)."""
  root = tmp_path_factory.mktemp("online")
  rm = train_rm.get_config()
  rm.data.synthetic.update(num_train_pairs=64, num_eval_pairs=16)
  rm.train.update(steps=4, log_every=2, eval_every=4, save_every=4, batch_size=16,
                  workdir=str(root / "rm"))
  rm_trainer.train(rm)
  dpo.train(tiny_config(root / "dpo", steps=4))
  return root


def online_config(workdir, rm_dir, rounds=3):
  c = tiny_config(workdir)
  c.dpo.online.update(rounds=rounds, prompts=8, samples=3, updates=1, reward=str(rm_dir))
  c.train.update(save_every=2, log_every=1)
  return c


def rows(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_rounds_labelled_by_a_reward_model(runs, tmp_path):
  online_dpo.train(online_config(tmp_path, runs / "rm"))
  logged = rows(tmp_path)
  assert [r["step"] for r in logged] == [1, 2, 3]
  for r in logged:
    assert r["label_gap"] > 0 and np.isfinite(r["loss"]) and np.isfinite(r["gold"])
  assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # round 0 samples the reference


def test_previous_round_reference_starts_every_round_at_log_2(runs, tmp_path):
  """SELM's reference: each round's one step compares the policy with itself (h = 0, loss
  log 2, optimism 0); against the fixed start the policy has moved away by round 3."""
  logged = {}
  for reference in ("previous", "start"):
    c = online_config(tmp_path / reference, runs / "rm")
    c.dpo.online.update(reference=reference, optimism=0.1)
    c.optim.update(warmup_steps=0, learning_rate=1e-2)
    online_dpo.train(c)
    logged[reference] = rows(tmp_path / reference)
  for r in logged["previous"]:
    assert r["loss"] == pytest.approx(np.log(2.0), abs=1e-5) and abs(r["optimism"]) < 1e-6
  assert logged["start"][0]["loss"] == pytest.approx(np.log(2.0), abs=1e-5)  # same round 0
  assert abs(logged["start"][2]["loss"] - np.log(2.0)) > 1e-3
  c = online_config(tmp_path / "bad", runs / "rm")
  c.dpo.online.reference = "last"
  with pytest.raises(ValueError, match="dpo.online.reference='last' is not one of"):
    online_dpo.OnlineDPOTrainer(c)
  c.dpo.online.reference, c.dpo.loss = "previous", "simpo"
  with pytest.raises(ValueError, match="dpo.loss='simpo' uses none"):
    online_dpo.OnlineDPOTrainer(c)


def test_spa_goes_on_from_a_dpo_run_against_its_reference(runs, tmp_path):
  c = online_config(tmp_path / "spa", runs / "rm", rounds=2)
  c.dpo.online.update(labeller="implicit", pairs="all")
  with pytest.raises(ValueError, match="set policy.init_from to an rmjax dpo run"):
    online_dpo.OnlineDPOTrainer(c)
  c.policy.init_from = str(runs / "dpo")
  online_dpo.train(c)
  first = rows(tmp_path / "spa")[0]
  # the dpo run's policy already differs from its reference: labels do not all tie, and
  # its samples are already away from the reference
  assert first["tied_pairs"] < 1.0 and first["kl"] > 0.0


def test_selm_optimism_is_logged_and_changes_the_run(runs, tmp_path):
  plain = online_config(tmp_path / "plain", runs / "rm", rounds=2)
  c = online_config(tmp_path / "selm", runs / "rm", rounds=2)
  c.dpo.online.optimism = 1.0
  for config in (plain, c):
    config.optim.update(warmup_steps=0, learning_rate=1e-3)  # round 0's update moves it
    online_dpo.train(config)
  selm, base = rows(tmp_path / "selm"), rows(tmp_path / "plain")
  assert "optimism" not in base[0]
  # round 0 samples the reference itself: log pi/pi_ref of its responses is 0; round 1's
  # policy has moved, so the term is not
  assert selm[0]["optimism"] == pytest.approx(0.0, abs=1e-6)
  assert np.isfinite(selm[1]["optimism"]) and selm[1]["optimism"] != 0.0
  assert selm[0]["label_gap"] == base[0]["label_gap"]  # the same samples and labels
  assert selm[1]["loss"] != base[1]["loss"]  # the term moved the round-0 update


def test_selm_optimism_refuses_what_it_is_not_defined_for(tmp_path):
  c = tiny_config(tmp_path)
  c.dpo.online.optimism = 0.001
  with pytest.raises(ValueError, match="dpo.online.optimism=0.001 .* dpo.online.rounds > 0"):
    dpo.DPOTrainer(c)
  c.dpo.online.rounds, c.dpo.loss = 2, "ipo"
  with pytest.raises(ValueError, match="set dpo.loss='dpo', not 'ipo'"):
    online_dpo.OnlineDPOTrainer(c)
  c.dpo.loss, c.dpo.online.optimism = "dpo", -1.0
  with pytest.raises(ValueError, match="dpo.online.optimism=-1.0 must be >= 0"):
    online_dpo.OnlineDPOTrainer(c)


@pytest.fixture(scope="module")
def files_world(tmp_path_factory):
  """``test_ppo_files.build_world`` with five prompts."""
  return build_world(tmp_path_factory.mktemp("online_files"), prompt_words=(3, 5, 7, 4, 6))


def files_config(world, workdir, rm_dir):
  c = online_config(workdir, rm_dir, rounds=2)
  c.dpo.online.samples = 2
  c.policy.init_from = str(world / "policy")
  c.prompts.update(path=str(world / "prompts.jsonl"), max_len=16, max_response_len=8)
  c.optim.update(learning_rate=1e-3, warmup_steps=0)
  return c


def test_rounds_on_a_prompts_file_with_a_hugging_face_policy(files_world, tmp_path):
  c = files_config(files_world, tmp_path, files_world / "rm")
  c.dpo.online.optimism = 0.001
  online_dpo.train(c)
  logged = rows(tmp_path)
  assert [r["step"] for r in logged] == [1, 2]
  for r in logged:
    for key in ("loss", "label_gap", "kl", "optimism", "reward_margin", "response_length"):
      assert np.isfinite(r[key]), key
    assert r["label_gap"] >= 0 and 0 < r["response_length"] <= 8
    assert "gold" not in r  # no synthetic task, no gold
  start = nnx.to_pure_dict(nnx.state(hf_io.load_hf(files_world / "policy", lm_head=True)))
  trained = nnx.to_pure_dict(nnx.state(build.trained_policy(tmp_path)))
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(start),
                                                   jax.tree.leaves(trained))]
  assert any(moved)


def test_prompts_files_refuse_what_cannot_work(files_world, runs, tmp_path):
  c = files_config(files_world, tmp_path, files_world / "rm")
  c.policy.init_from = ""
  with pytest.raises(ValueError, match="prompts.path=.* needs policy.init_from"):
    online_dpo.OnlineDPOTrainer(c)
  c = files_config(files_world, tmp_path, runs / "rm")  # a synthetic-task reward model
  with pytest.raises(ValueError, match=f"reward model {runs / 'rm'}: its vocab_size"):
    online_dpo.OnlineDPOTrainer(c)
  c = files_config(files_world, tmp_path, files_world / "rm")
  c.prompts.max_response_len = 60
  with pytest.raises(ValueError, match="prompts.max_response_len=60 exceed"):
    online_dpo.OnlineDPOTrainer(c)
  c.dpo.online.rounds = 0
  with pytest.raises(ValueError, match="prompts.path=.* is read by iterative DPO only"):
    dpo.DPOTrainer(c)


@pytest.mark.slow
def test_sigkill_then_resume_continues_bit_identically(runs, tmp_path):
  """With SELM's optimism on: its y_ref draws come from the round's key too."""
  kill_resume.check(
      tmp_path, "from test_online_dpo import online_config\nfrom rmjax.rl import online_dpo\n"
      f"c = online_config(sys.argv[1], {str(runs / 'rm')!r}, rounds=4)\n"
      "c.dpo.online.optimism = 0.1\nonline_dpo.train(c)\n",
      os.path.dirname(__file__), kill_at=2, final=4, resumed="resumed from round 2")
