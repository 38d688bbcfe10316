"""The one precision rule of the math modules: compute in at least float32."""

from __future__ import annotations

import jax.numpy as jnp


def at_least_f32(x) -> jnp.ndarray:
  """``x`` as an array of at least float32 precision: bfloat16/float16 rewards, log-probs
  and hidden states are upcast, float64 (tests under x64) is kept."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))
