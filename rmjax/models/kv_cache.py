"""The key/value cache for incremental decoding, as a plain pytree of arrays.

Slots are filled left to right; every sequence of the batch writes the same slot at
each step, and ``valid`` marks which slots hold real tokens (padding never does). A
sequence's RoPE positions are counted from its own first real token, so left-padded
prompts of different lengths decode correctly side by side.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rmjax.models.config import ModelConfig


class KVCache(NamedTuple):
  keys: tuple[jax.Array, ...]  # per layer [batch, kv_heads, max_len, head_dim]
  values: tuple[jax.Array, ...]  # per layer, same shape
  valid: jax.Array  # [batch, max_len] bool: slot holds a real token
  index: jax.Array  # [] int32: next slot to write

  @property
  def max_len(self) -> int:
    return self.valid.shape[1]


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> KVCache:
  # Slots on the third axis: the layout attention reads without a transpose.
  shape = (batch, cfg.kv_heads, max_len, cfg.dim_per_head)
  zeros = tuple(jnp.zeros(shape, cfg.compute_dtype) for _ in range(cfg.n_layers))
  return KVCache(keys=zeros, values=zeros,
                 valid=jnp.zeros((batch, max_len), bool),
                 index=jnp.zeros((), jnp.int32))


def write(buffer: jax.Array, new: jax.Array, index: jax.Array, axis: int = 1) -> jax.Array:
  """Write ``new`` into ``buffer`` starting at slot ``index`` of ``axis``."""
  starts = tuple(index if i == axis else 0 for i in range(buffer.ndim))
  return jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), starts)
