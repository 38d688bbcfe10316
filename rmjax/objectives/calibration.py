"""Calibration of a stated confidence against outcomes (``docs/algorithms.md`` §4b): how
PPO-M and PPO-C are judged (Leng et al. 2024 report the ECE of verbalised confidence).

Unlike ``bt.expected_calibration_error``, which scores a reward model's σ(Δ) on pairs,
these take any confidence in [0, 1] a policy states for a response and whether that
response was correct.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _inputs(confidence, correct):
  c = jnp.asarray(confidence, jnp.float32)
  y = jnp.asarray(correct, jnp.float32)
  if c.ndim != 1 or c.shape != y.shape or c.shape[0] == 0:
    raise ValueError(f"confidence and correct must be equal-length non-empty vectors; got "
                     f"{c.shape} and {y.shape}")
  return c, y


def ece(confidence, correct, num_bins: int = 10):
  """Expected calibration error Σ_b (n_b / N)·|acc_b − conf_b| = (1/N) Σ_b |Σ_{i∈b}
  (y_i − c_i)| over ``num_bins`` equal-width bins of [0, 1] (left-closed, the last also
  holds 1).

  Args:
    confidence: [N] stated confidence c_i in [0, 1].
    correct: [N] outcome y_i in {0, 1} (or a probability of being correct).
    num_bins: static number of bins (11 gives every level k/10 its own bin).

  Returns:
    scalar ECE in [0, 1].
  """
  c, y = _inputs(confidence, correct)
  bins = jnp.clip(jnp.floor(c * num_bins), 0, num_bins - 1).astype(jnp.int32)
  gap = jax.ops.segment_sum(y - c, bins, num_segments=num_bins)
  return jnp.sum(jnp.abs(gap)) / c.shape[0]


def overconfidence(confidence, correct):
  """mean(c) − mean(y): > 0 when the stated confidence exceeds the accuracy. [N] → scalar."""
  c, y = _inputs(confidence, correct)
  return jnp.mean(c) - jnp.mean(y)
