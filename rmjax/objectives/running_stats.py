"""Running reward normalisation: Welford moments merged batch by batch, then clip (§5).

Pure functions of arrays; the state is a ``RunningMoments`` pytree of float32 scalars, so it
lives in a checkpoint and passes through ``jit``. Equations: ``docs/algorithms.md``
§5, r̃ = clip((r − μ)/σ, −δ, δ) with δ = 0.8 from running moments. Batches are merged with
the parallel form of Welford's update (Chan, Golub and LeVeque), which is exact (up to
rounding) however the stream is split into batches:

  n = n_a + n_b,  d = μ_b − μ_a,  μ = μ_a + d · n_b / n,  M2 = M2_a + M2_b + d² · n_a n_b / n,

where M2 is the sum of squared deviations from the mean and var = M2 / n (population).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class RunningMoments(NamedTuple):
  """count n, mean μ and M2 = Σ (x − μ)², each a float32 scalar."""
  count: jax.Array
  mean: jax.Array
  m2: jax.Array


def init_moments():
  """Empty moments (n = 0)."""
  zero = jnp.zeros((), jnp.float32)
  return RunningMoments(zero, zero, zero)


def merge_moments(a, b):
  """Moments of the union of the two samples behind ``a`` and ``b`` (module docstring)."""
  n = a.count + b.count
  safe = jnp.where(n > 0, n, 1.0)
  d = b.mean - a.mean
  mean = a.mean + d * b.count / safe
  m2 = a.m2 + b.m2 + d * d * a.count * b.count / safe
  return RunningMoments(n, mean, m2)


def update_moments(state, x):
  """Fold a batch into the running moments.

  Args:
    state: RunningMoments.
    x: [...] values (e.g. [B] sequence scores); every element counts.

  Returns:
    RunningMoments of everything seen so far, ``x`` included.
  """
  x = jnp.asarray(x, jnp.float32).reshape(-1)
  if x.size == 0:
    return state
  mean = jnp.mean(x)
  batch = RunningMoments(jnp.asarray(x.size, jnp.float32), mean, jnp.sum((x - mean) ** 2))
  return merge_moments(state, batch)


def moments_variance(state):
  """Population variance M2 / n of everything seen (0 while n = 0)."""
  return state.m2 / jnp.maximum(state.count, 1.0)


def normalize_and_clip(r, state, clip=0.8, eps=1e-8):
  """r̃ = clip((r − μ) / (σ + eps), −δ, δ) with μ, σ from ``state`` (§5, δ = 0.8).

  σ is the population standard deviation; trlx divides by n − 1, a factor √(n/(n−1)) that
  vanishes after the first few batches. As in trlx, update the moments with the batch before
  normalising it, so the first batch is measured against its own statistics.

  Args:
    r: [...] rewards (sequence scores).
    state: RunningMoments.
    clip: δ > 0, or None for no clipping.
    eps: added to σ so that a constant stream divides by eps, not 0.

  Returns:
    float32 [...], the same shape as ``r``.
  """
  z = (jnp.asarray(r, jnp.float32) - state.mean) / (jnp.sqrt(moments_variance(state)) + eps)
  return z if clip is None else jnp.clip(z, -clip, clip)
