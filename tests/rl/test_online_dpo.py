"""Iterative DPO: pairs by hand, rounds labelled by a reward model or by the policy's own
implicit reward (SPA), its checks, and exact resume after SIGKILL."""

import json
import os

import kill_resume
import numpy as np
import pytest
from test_dpo import tiny_config

from rmjax.configs import train_rm
from rmjax.rl import dpo, online_dpo
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


@pytest.mark.slow
def test_sigkill_then_resume_continues_bit_identically(runs, tmp_path):
  kill_resume.check(
      tmp_path, "from test_online_dpo import online_config\nfrom rmjax.rl import online_dpo\n"
      f"online_dpo.train(online_config(sys.argv[1], {str(runs / 'rm')!r}, rounds=4))\n",
      os.path.dirname(__file__), kill_at=2, final=4, resumed="resumed from round 2")
