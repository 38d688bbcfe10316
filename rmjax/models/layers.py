"""Building blocks: parameters with logical axes, norms, RoPE, dropout.

Every parameter is an ``nnx.Param`` carrying ``axes``: one logical name per dimension
("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", ...). Only
``rmjax/parallel/rules.py`` turns these names into mesh axes; nothing here knows a mesh.
Activations are named the same way (``shard_activation``), and the parallel layer
decides, per traced program, what the names mean (``rmjax.parallel.activations``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rmjax.models.config import ModelConfig


def param(rngs: nnx.Rngs, shape, axes, dtype, std: float | None,
          kind: type[nnx.Param] = nnx.Param) -> nnx.Param:
  """A parameter (of variable type ``kind``) of ``shape`` annotated with logical ``axes``.

  ``std=None`` initialises to ones (norm scales); ``std=0`` to zeros (biases);
  otherwise a truncated normal with that standard deviation.
  """
  if len(shape) != len(axes):
    raise ValueError(f"shape {shape} and logical axes {axes} differ in rank")
  if std is None:
    value = jnp.ones(shape, dtype)
  elif std == 0:
    value = jnp.zeros(shape, dtype)
  else:
    value = std * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape, dtype)
  return kind(value, axes=tuple(axes))


class LoRA(nnx.Module):
  """Low-rank adapter of a projection W [*inputs, *outputs]: adds (alpha / r) (x A) B.

  A [*inputs, r] starts as a truncated normal of std 1 / sqrt(fan-in), B [r, *outputs]
  at zero, so the adapted projection equals W at initialisation. Both are
  ``nnx.LoRAParam`` (a Param subclass) so optimizers can tell them from the base; A's
  input axes and B's output axes carry W's logical names, the rank "lora_rank".
  """

  def __init__(self, cfg: ModelConfig, w: nnx.Param, n_inputs: int, rngs: nnx.Rngs):
    r, axes = cfg.lora_rank, w.get_metadata()["axes"]
    inputs, outputs = w.shape[:n_inputs], w.shape[n_inputs:]
    self.n_inputs, self.scale = n_inputs, cfg.lora_alpha / r
    self.a = param(rngs, (*inputs, r), (*axes[:n_inputs], "lora_rank"), cfg.weight_dtype,
                   math.prod(inputs) ** -0.5, nnx.LoRAParam)
    self.b = param(rngs, (r, *outputs), ("lora_rank", *axes[n_inputs:]), cfg.weight_dtype, 0,
                   nnx.LoRAParam)

  def __call__(self, x: jax.Array, outputs: tuple = ()) -> jax.Array:
    """x [..., *inputs] -> the update [..., *outputs] in x's dtype. ``outputs``: an
    index into B's output axes (a slice of the projection, e.g. its query heads)."""
    down = jnp.tensordot(x, self.a[...].astype(x.dtype), axes=self.n_inputs) * self.scale
    return jnp.tensordot(down, self.b[...][(slice(None), *outputs)].astype(x.dtype), axes=1)


class Norm(nnx.Module):
  """RMSNorm (llama family) or LayerNorm (gpt2 family), computed in float32."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.rms = cfg.family == "llama"
    self.eps = cfg.norm_eps
    self.scale = param(rngs, (cfg.d_model,), ("norm",), cfg.weight_dtype, None)
    self.bias = None if self.rms else param(
        rngs, (cfg.d_model,), ("norm",), cfg.weight_dtype, 0)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., d_model] -> same shape and dtype."""
    h = x.astype(jnp.float32)
    if self.rms:
      h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
      h = h * self.scale[...].astype(jnp.float32)
    else:
      mean = jnp.mean(h, axis=-1, keepdims=True)
      var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
      h = (h - mean) * jax.lax.rsqrt(var + self.eps)
      h = h * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return h.astype(x.dtype)


def rope_inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
  """[head_dim // 2] inverse frequencies, with optional linear or Llama-3 scaling."""
  dim = cfg.dim_per_head
  inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
  if cfg.rope_scaling is None:
    return inv_freq.astype(np.float32)
  scaling = dict(cfg.rope_scaling)
  factor = float(scaling["factor"])
  if scaling["rope_type"] == "linear":
    return (inv_freq / factor).astype(np.float32)
  # Llama 3: long wavelengths are slowed by `factor`, short ones kept, and the band
  # between them interpolated smoothly.
  low = float(scaling.get("low_freq_factor", 1.0))
  high = float(scaling.get("high_freq_factor", 4.0))
  original = float(scaling["original_max_position_embeddings"])
  wavelen = 2 * math.pi / inv_freq
  smooth = (original / wavelen - low) / (high - low)
  interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
  scaled = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
  middle = (wavelen <= original / low) & (wavelen >= original / high)
  return np.where(middle, interpolated, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotate x [batch, seq, ..., head_dim] by positions [batch, seq].

  Uses the half-split layout of Hugging Face Llama (rotate_half), not the
  interleaved layout llama.cpp stores; GGUF import converts between them.
  """
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [b, s, d/2]
  extra = (slice(None), slice(None)) + (None,) * (x.ndim - 3)
  sin = jnp.sin(angles)[extra]
  cos = jnp.cos(angles)[extra]
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate(
      [first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout; the identity when ``key`` is None (evaluation) or rate is 0."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
