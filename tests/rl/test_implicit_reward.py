"""A DPO run as a reward source, and trained policies as starting points: the implicit
reward by hand, an sft run's policy as dpo's start and reference, a dpo run in
reward.workdirs of rmjax rl."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict
from test_dpo import tiny_config as dpo_config
from test_sft import tiny_config as sft_config

from rmjax.configs import rl as rl_config
from rmjax.rl import build, dpo, sft
from rmjax.rl import trainer as rl_trainer
from rmjax.rl.implicit_reward import ImplicitRewardSource, sequence_logprobs
from rmjax.tasks import preference as synthetic


def _rows():
  tokens = np.array([[1, 5, 6, 7, 2, 0], [1, 9, 4, 2, 0, 0]], np.int32)
  return tokens, tokens > 0, np.array([2, 1], np.int32)


def test_implicit_reward_is_beta_times_the_response_log_ratio():
  task = synthetic.build_task(synthetic.SyntheticConfig())
  other = synthetic.build_task(synthetic.SyntheticConfig(seed=1)).policy
  tokens, mask, plen = _rows()
  same = ImplicitRewardSource(task.policy, task.policy, _loss("dpo", 0.5), "same")
  np.testing.assert_allclose(same(tokens, mask, plen), 0.0, atol=1e-6)
  source = ImplicitRewardSource(other, task.policy, _loss("dpo", 0.5), "two")
  lp, _ = sequence_logprobs(other, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(plen))
  ref, _ = sequence_logprobs(task.policy, jnp.asarray(tokens), jnp.asarray(mask),
                             jnp.asarray(plen))
  np.testing.assert_allclose(source(tokens, mask, plen)[:, 0], 0.5 * (lp - ref), rtol=1e-5)
  assert "beta 0.5" in source.scale
  with pytest.raises(ValueError, match="must pass each row's prompt_len"):
    source(tokens, mask)


def test_simpo_and_orpo_runs_are_scored_by_their_own_losses_rewards():
  """No reference for either: SimPO's β·log π/|y| and ORPO's log odds of the mean token
  probability, by hand from the response log-likelihood and length."""
  task = synthetic.build_task(synthetic.SyntheticConfig())
  other = synthetic.build_task(synthetic.SyntheticConfig(seed=1)).policy
  tokens, mask, plen = _rows()
  lp, n = sequence_logprobs(other, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(plen))
  mean = np.asarray(lp) / np.asarray(n)
  simpo = ImplicitRewardSource(other, task.policy, _loss("simpo", 2.0), "simpo")
  np.testing.assert_allclose(simpo(tokens, mask, plen)[:, 0], 2.0 * mean, rtol=1e-5)
  orpo = ImplicitRewardSource(other, task.policy, _loss("orpo", 2.0), "orpo")
  p = np.exp(mean)
  np.testing.assert_allclose(orpo(tokens, mask, plen)[:, 0], np.log(p / (1 - p)), rtol=1e-5)
  assert "SimPO" in simpo.scale and "log odds" in orpo.scale
  with pytest.raises(ValueError, match="dpo.loss='nope' is not one of"):
    ImplicitRewardSource(other, task.policy, _loss("nope", 1.0), "bad")


def _loss(name, beta):
  return ConfigDict({"loss": name, "beta": beta})


def test_sft_then_dpo_then_the_dpo_run_as_a_reward_source(tmp_path):
  sft.train(sft_config(tmp_path / "sft", steps=4))
  tuned = build.trained_policy(tmp_path / "sft")
  c = dpo_config(tmp_path / "dpo", steps=2)
  c.policy.init_from = str(tmp_path / "sft")
  trainer = dpo.DPOTrainer(c)
  for a, b in zip(jax.tree.leaves(trainer.reference), jax.tree.leaves(nnx.state(tuned))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # dpo starts from sft's
  dpo.train(c)
  r = rl_config.get_config()
  r.rl.update(algorithm="rloo", iterations=1, prompts=4, samples_per_prompt=2,
              max_new_tokens=4)
  r.reward.workdirs = (str(tmp_path / "dpo"),)
  r.train.workdir = str(tmp_path / "rl")
  run, _ = rl_trainer.build_run(r)
  (source,) = run.sources
  assert isinstance(source, ImplicitRewardSource) and source.beta == c.dpo.beta
  # the reference of the implicit reward is the sft policy dpo started from
  for a, b in zip(jax.tree.leaves(source.reference), jax.tree.leaves(nnx.state(tuned))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  r.critic.init = "reward_model"
  r.rl.algorithm = "ppo"
  with pytest.raises(ValueError, match="critic.init='reward_model' needs a train-rm run"):
    rl_trainer.build_run(r)
