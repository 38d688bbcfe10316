"""Critic-free advantage estimators: RLOO, GRPO, Dr. GRPO and REINFORCE++.

Pure, jit-able functions of arrays. Sequence-level inputs are ``[P·k]`` rewards of k
samples for each of P prompts, a prompt's samples contiguous (rows p·k … p·k + k − 1, the
order in which the RL trainer samples them); token-level inputs are ``[B, T]`` with a bool
response ``mask``. Equations and defaults: ``docs/algorithms.md`` §5b.

  RLOO (Ahmadian et al. 2024):      A_i = R_i − 1/(k−1) Σ_{j≠i} R_j;
  GRPO (Shao et al. 2024):          A_i = (R_i − mean_g R) / (std_g R + ε), std with n − 1;
  Dr. GRPO (Liu et al. 2025):       A_i = R_i − mean_g R  (no std scaling);
  REINFORCE++ (Hu 2025):            A_t = whiten_batch(Σ_{s≥t} r_s), r_s per-token rewards.

The sequence advantages are the same at every token of the response (``per_token``).
"""

from __future__ import annotations

import jax.numpy as jnp

from rmjax.objectives import ppo
from rmjax.objectives.precision import at_least_f32


def _groups(rewards, k: int):
  r = at_least_f32(rewards)
  if r.ndim != 1 or r.shape[0] % k:
    raise ValueError(f"rewards of shape {r.shape} do not split into groups of k={k} samples")
  if k < 2:
    raise ValueError(f"a group baseline needs k >= 2 samples per prompt; got k={k}")
  return r.reshape(-1, k)


def rloo(rewards, k: int):
  """Leave-one-out advantages: each sample's reward minus the mean of its k − 1 siblings'.

  Args:
    rewards: [P·k] sequence rewards. k: samples per prompt (≥ 2, static).

  Returns:
    float [P·k]; each group sums to 0.
  """
  g = _groups(rewards, k)
  others = (jnp.sum(g, axis=1, keepdims=True) - g) / (k - 1)
  return (g - others).reshape(-1)


def group_relative(rewards, k: int, scale: bool = True, eps: float = 1e-4):
  """GRPO's advantages (``scale``) or Dr. GRPO's (not ``scale``): the reward minus its
  group's mean, divided by the group's sample standard deviation (n − 1) plus ``eps`` when
  ``scale``. A group whose rewards are all equal gets zeros either way.

  Args:
    rewards: [P·k]. k: samples per prompt (≥ 2, static). scale: static bool. eps: ε.

  Returns:
    float [P·k].
  """
  g = _groups(rewards, k)
  centred = g - jnp.mean(g, axis=1, keepdims=True)
  if scale:
    centred = centred / (jnp.std(g, axis=1, keepdims=True, ddof=1) + eps)
  return centred.reshape(-1)


def reinforce_pp(token_rewards, mask, eps: float = 1e-6):
  """REINFORCE++ advantages: the undiscounted return-to-go of each token, whitened over
  every valid token of the batch (mean 0, std 1; the global normalisation that replaces a
  critic's baseline).

  Args:
    token_rewards: [B, T] per-token rewards (−β·KL_t, plus the score at the last token).
    mask: bool [B, T].

  Returns:
    float [B, T], zero where mask is False.
  """
  m = jnp.asarray(mask, bool)
  r = jnp.where(m, at_least_f32(token_rewards), 0.0)
  to_go = jnp.flip(jnp.cumsum(jnp.flip(r, axis=1), axis=1), axis=1)
  return ppo.whiten(to_go, m, eps=eps)


def per_token(advantages, mask):
  """Sequence advantages [B] broadcast to their valid response tokens: [B, T]."""
  m = jnp.asarray(mask, bool)
  return jnp.where(m, at_least_f32(advantages)[:, None], 0.0)
