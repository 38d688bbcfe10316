"""PPO against the synthetic task's gold reward itself: the positive control of the PPO
experiments (if PPO on the true reward does not raise it, the harness is broken and no
comparison of proxies means anything).

The gold reward needs each response's start column; a reward source sees only the
right-padded (tokens, mask). Prompts of the task's full prompt length put every response at
the same column, so the gold total becomes a plain ``(tokens, mask)`` function.
"""

from __future__ import annotations

import jax
import numpy as np

from rmjax.rl import build
from rmjax.rm import reward_source
from rmjax.tasks import preference as synthetic


def full_length_prompts(task):
  """A prompt sampler like the task's, every prompt ``max_prompt_len`` tokens long (BOS,
  then uniform content tokens), so that a response starts at the same column in every row."""
  cfg = task.cfg

  def sample(key, n: int):
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    tokens = rng.integers(synthetic.FIRST_CONTENT, cfg.vocab_size, (n, cfg.max_prompt_len))
    tokens[:, 0] = synthetic.BOS
    return tokens.astype(np.int32), np.full(n, cfg.max_prompt_len, np.int32)

  return sample


def rollout(task) -> build.RolloutTask:
  """The task's base policy on full-length prompts, with the gold reward as its evaluation
  hook (so the run logs "gold" as any PPO run on the task does)."""
  base = build.synthetic_rollout_task(task)
  return build.RolloutTask(
      policy=task.policy, sample_prompts=full_length_prompts(task),
      prompt_width=task.cfg.max_prompt_len, max_response_len=base.max_response_len,
      eos_id=base.eos_id, pad_id=base.pad_id, evaluate=task.gold_reward, task=base.task,
      name="the synthetic task, full-length prompts")


def source(task) -> reward_source.FunctionSource:
  """The gold total of responses to full-length prompts, as a one-member reward source."""
  width = task.cfg.max_prompt_len
  return reward_source.FunctionSource(
      lambda tokens, mask: task.gold_reward(tokens, mask, width)["total"],
      task.cfg.vocab_size, 1, name="gold total")
