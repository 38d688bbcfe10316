"""PPO-C in the RL trainer: the calibrated score, its EMA in the state, the stated-confidence
metrics (ECE against gold correctness), and a task that states no confidence refused."""

import dataclasses

import jax
import numpy as np
import pytest
from test_ppo_trainer import low_ids, toy_config

from rmjax.objectives import calibration
from rmjax.rl import build
from rmjax.rl import trainer as rl_trainer
from rmjax.rl.best_of_n import right_padded
from rmjax.tasks import confidence
from rmjax.tasks import preference as synthetic


def _config(tmp_path, calibrate: str):
  config = toy_config(tmp_path, 2, "rloo")
  config.rl.update(prompts=8, samples_per_prompt=2, max_new_tokens=8)
  config.reward.update(member_norm=False, normalize=False, clip=0.0, calibration=calibrate,
                       calibration_w=2.0, calibration_alpha=0.25)
  return config


def _episodes(trainer, state, config):
  """Per episode: the known reward, the stated confidence and the gold total."""
  episodes, metrics, carried = trainer.rollout(state, 0)
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  _, plen = trainer.task.sample_prompts(jax.random.fold_in(key, 0), config.rl.prompts)
  plen = np.repeat(plen, config.rl.samples_per_prompt)
  tokens, mask = (np.asarray(x) for x in right_padded(episodes["tokens"], episodes["mask"]))
  reward = np.asarray(low_ids(tokens, mask))[:, 0]
  gold = np.asarray(trainer.task.evaluate(tokens, mask, plen)["total"])
  return metrics, carried, reward, synthetic.stated_confidence(tokens, mask, plen), gold


def test_ppo_c_scores_r_plus_w_r_minus_ema_times_confidence_offset(tmp_path):
  task = synthetic.build_task(synthetic.SyntheticConfig())
  config = _config(tmp_path, "ppo_c")
  trainer, _ = rl_trainer.build_run(config, scorers=[jax.jit(low_ids)], task=task)
  state = trainer.init_state()
  assert float(state["reward_ema"]) == 0.0
  metrics, carried, r, c, gold = _episodes(trainer, state, config)
  assert metrics["score"] == pytest.approx(np.mean(r + 2.0 * r * (c - 0.5)), rel=1e-5)
  assert float(carried["reward_ema"]) == pytest.approx(0.25 * r.mean(), rel=1e-5)
  right = confidence.correct(gold, task.quality_threshold)
  assert metrics["confidence"] == pytest.approx(c.mean(), rel=1e-5)
  assert metrics["ece"] == pytest.approx(float(calibration.ece(c, right, 11)), abs=1e-6)
  assert metrics["overconfidence"] == pytest.approx(c.mean() - right.mean(), abs=1e-6)
  plain, _ = rl_trainer.build_run(_config(tmp_path, "none"), scorers=[jax.jit(low_ids)],
                                  task=task)
  plain_state = plain.init_state()
  assert "reward_ema" not in plain_state
  assert plain.rollout(plain_state, 0)[1]["score"] == pytest.approx(r.mean(), rel=1e-5)


def test_ppo_c_needs_a_task_that_states_a_confidence(tmp_path):
  task = build.synthetic_rollout_task(synthetic.build_task(synthetic.SyntheticConfig()))
  silent = dataclasses.replace(task, confidence=None, name="a file of prompts")
  with pytest.raises(ValueError, match="a file of prompts states none"):
    rl_trainer.build_run(_config(tmp_path, "ppo_c"), scorers=[jax.jit(low_ids)], task=silent)
  with pytest.raises(ValueError, match="reward.calibration='ppo_m'"):
    rl_trainer.build_run(_config(tmp_path, "ppo_m"), scorers=[jax.jit(low_ids)], task=task)
