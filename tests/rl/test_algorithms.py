"""``rl.algorithm``: each estimator's settings, its advantages on a fixed rollout by hand,
and every algorithm end to end on the synthetic task's policy."""

import json
import os

import jax
import numpy as np
import pytest
from test_ppo_trainer import low_ids, toy_config

from rmjax.configs import rl as rl_config
from rmjax.rl import algorithms
from rmjax.rl import trainer as rl_trainer
from rmjax.tasks import preference as synthetic


def _sections(**rl):
  c = rl_config.get_config()
  c.rl.update(rl)
  return c.rl, c.kl


def test_defaults_per_algorithm():
  got = {name: algorithms.settings(*_sections(algorithm=name)) for name in algorithms.NAMES}
  assert [(s.critic, s.aggregation, s.kl_placement, s.kl_estimator) for s in got.values()] == [
      (True, "token_mean", "reward", "k1"), (False, "constant", "reward", "k1"),
      (False, "sequence_mean", "loss", "k3"), (False, "constant", "loss", "k3"),
      (False, "token_mean", "reward", "k1")]


def test_overrides_and_bad_names():
  rl, kl = _sections(algorithm="grpo", loss_aggregation="token_mean", kl_estimator="k2")
  kl.placement = "reward"
  s = algorithms.settings(rl, kl)
  assert (s.aggregation, s.kl_placement, s.kl_estimator) == ("token_mean", "reward", "k2")
  with pytest.raises(ValueError, match="rl.algorithm='a2c'"):
    algorithms.settings(*_sections(algorithm="a2c"))
  with pytest.raises(ValueError, match="rl.loss_aggregation='sum'"):
    algorithms.settings(*_sections(loss_aggregation="sum"))
  with pytest.raises(ValueError, match="rl.samples_per_prompt=1 must be >= 2"):
    algorithms.settings(*_sections(algorithm="rloo", samples_per_prompt=1))


def _rollout():
  """Two prompts x two samples, three response tokens (the last row two)."""
  logp = np.log(np.array([[0.5, 0.5, 0.5], [0.2, 0.5, 0.5], [0.5, 0.5, 0.5],
                          [0.5, 0.25, 0.5]], np.float32))
  ref = np.log(np.full((4, 3), 0.5, np.float32))
  mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]], bool)
  return np.array([1.0, 2.0, 0.0, 4.0], np.float32), logp, ref, mask


def test_rloo_puts_the_sequence_kl_in_the_reward():
  scores, logp, ref, mask = _rollout()
  s = algorithms.settings(*_sections(algorithm="rloo", samples_per_prompt=2))
  a, returns = algorithms.advantages(s, scores, logp, ref, mask, 0.5, 2)
  kl = [0.0, np.log(0.4), 0.0, np.log(0.5)]  # sum_t log pi - log pi_ref (k1)
  r = scores - 0.5 * np.array(kl)
  want = np.array([r[0] - r[1], r[1] - r[0], r[2] - r[3], r[3] - r[2]])
  np.testing.assert_allclose(np.asarray(a)[:, 0], want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(a)[3], [want[3], want[3], 0.0], rtol=1e-5)
  assert returns is None


def test_grpo_keeps_the_kl_out_of_the_advantages():
  scores, logp, ref, mask = _rollout()
  s = algorithms.settings(*_sections(algorithm="grpo", samples_per_prompt=2))
  a, _ = algorithms.advantages(s, scores, logp, ref, mask, 0.5, 2)
  # a pair (x, y): mean (x + y) / 2, sample std |x - y| / sqrt 2; pairs (1, 2) and (0, 4)
  first, second = 0.5 / (1 / 2 ** 0.5 + 1e-4), 2.0 / (4 / 2 ** 0.5 + 1e-4)
  np.testing.assert_allclose(np.asarray(a)[:, 0], [-first, first, -second, second], rtol=1e-5)


def test_reinforce_pp_whitens_the_kl_penalised_returns():
  scores, logp, ref, mask = _rollout()
  s = algorithms.settings(*_sections(algorithm="reinforce_pp"))
  a, _ = algorithms.advantages(s, scores, logp, ref, mask, 0.5, 2)
  k1 = np.where(mask, logp - ref, 0.0)
  rewards = -0.5 * k1
  last = mask.sum(1) - 1
  rewards[np.arange(4), last] += scores
  to_go = np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1]
  v = to_go[mask]
  np.testing.assert_allclose(np.asarray(a)[mask], (v - v.mean()) / np.sqrt(v.var() + 1e-6),
                             rtol=1e-4, atol=1e-5)


def _metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.parametrize("algorithm", ["rloo", "grpo", "dr_grpo", "reinforce_pp"])
def test_every_critic_free_algorithm_trains_without_a_critic_and_logs_the_diagnostics(
    tmp_path, algorithm):
  task = synthetic.build_task(synthetic.SyntheticConfig())
  config = toy_config(tmp_path, 2, algorithm)
  config.rl.update(prompts=4, samples_per_prompt=2, max_new_tokens=6)
  trainer, _ = rl_trainer.build_run(config, scorers=[jax.jit(low_ids)], task=task)
  state = trainer.init_state()
  assert "critic" not in state and "critic_opt" not in state
  rl_trainer.train(config, scorers=[jax.jit(low_ids)], task=task)
  rows = _metrics(tmp_path)
  for key in ("kl", "kl_k2", "kl_k3", "entropy", "response_length", "policy_loss"):
    assert all(np.isfinite(r[key]) for r in rows), key
  assert "value_loss" not in rows[0]
  assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the reference
  assert rows[0]["entropy"] > 0.1
  assert ("kl_loss" in rows[0]) == (algorithm in ("grpo", "dr_grpo"))


@pytest.mark.slow
def test_grpo_raises_a_known_reward():
  config = toy_config("unused", 24, "grpo")
  config.kl.coef = 0.01
  task = synthetic.build_task(synthetic.SyntheticConfig())
  trainer, _ = rl_trainer.build_run(config, scorers=[jax.jit(low_ids)], task=task)
  state = trainer.init_state()
  scores = []
  for i in range(24):
    state, m = trainer.step(state, i)
    scores.append(m["score"])
    assert np.isfinite(m["policy_loss"]) and np.isfinite(m["kl_loss"])
  assert np.mean(scores[-4:]) > np.mean(scores[:3]) + 3.0, scores


def test_constrained_rlhf_learns_each_sources_weight_against_its_threshold(tmp_path):
  task = synthetic.build_task(synthetic.SyntheticConfig())
  config = toy_config(tmp_path, 2, "rloo")
  config.rl.update(prompts=4, samples_per_prompt=2, max_new_tokens=6)
  # both sources normalised to mean 0 on base samples: -5 is far below, +5 far above
  config.reward.update(thresholds=(-5.0, 5.0), constraint_lr=1.0, norm_batches=2)
  scorers = [jax.jit(low_ids), jax.jit(lambda t, m: 2.0 * low_ids(t, m))]
  rl_trainer.train(config, scorers=scorers, task=task)
  rows = _metrics(tmp_path)
  assert rows[0]["multiplier_0"] == pytest.approx(0.5) == rows[0]["multiplier_1"]
  assert rows[1]["multiplier_0"] < 0.5 < rows[1]["multiplier_1"]
  assert rows[0]["constraint_0"] > 0 > rows[0]["constraint_1"]
  config.reward.thresholds = (1.0,)
  with pytest.raises(ValueError, match="1 entries for 2 reward sources"):
    rl_trainer.build_run(config, scorers=scorers, task=task)
