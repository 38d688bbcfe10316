"""Model configuration: one frozen dataclass describes every decoder we build.

Two block styles share one code path:
  * ``"llama"``: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, optional QKV
    bias (Qwen2 sets it), tied or untied embeddings. Covers Llama, Qwen2, SmolLM2.
  * ``"gpt2"``: learned absolute positions, LayerNorm, GELU (tanh form) MLP, biases
    everywhere, tied embeddings.

Heads are chosen by config: an LM head (tied to the embedding or its own matrix),
``num_reward_heads`` scalar reward heads without bias (K > 1 is a K-head ensemble on
one backbone) and an optional per-token value head.

``lora_rank > 0`` adds low-rank adapters (``rmjax/models/lora.py``) to the projections
named in ``lora_targets``; training then updates only the adapters and the heads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

FAMILIES = ("llama", "gpt2")
ROPE_SCALING_TYPES = ("linear", "llama3")
# Projections LoRA can adapt: the fused query/key/value, the attention output, the fused
# gate/up of the MLP (gpt2: its up projection, c_fc) and the MLP's down projection.
LORA_TARGETS = ("qkv", "o", "gate_up", "down")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture, precision and head choices of a decoder-only transformer."""

  family: str = "llama"
  vocab_size: int = 512
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int | None = None  # None: no grouping (= n_heads).
  head_dim: int | None = None  # None: d_model // n_heads.
  d_ff: int = 688
  max_seq_len: int = 2048  # Size of the learned position table (gpt2 only).
  rope_theta: float = 10_000.0
  # None, or (key, value) pairs (a dict is converted) with "rope_type" in
  # ROPE_SCALING_TYPES and its fields
  # (Hugging Face's names: factor, low_freq_factor, high_freq_factor,
  # original_max_position_embeddings).
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  norm_eps: float = 1e-5
  qkv_bias: bool = False
  tie_embeddings: bool = False
  dropout_rate: float = 0.0
  dtype: str = "float32"  # Compute dtype; "bfloat16" for mixed precision.
  param_dtype: str = "float32"
  remat: bool = False  # Rematerialise each block in the backward pass.
  lm_head: bool = True
  num_reward_heads: int = 0
  value_head: bool = False
  init_std: float = 0.02
  # LoRA (rmjax/models/lora.py): rank 0 = off; each adapted projection W gains
  # (lora_alpha / lora_rank) * A B; lora_targets: comma-separated names of LORA_TARGETS.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: str = ",".join(LORA_TARGETS)

  def __post_init__(self):
    if isinstance(self.rope_scaling, dict):  # keep the config hashable (a jit static)
      object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
    problems = []
    if self.family not in FAMILIES:
      problems.append(f"family={self.family!r} is not one of {FAMILIES}")
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff"):
      if getattr(self, name) <= 0:
        problems.append(f"{name}={getattr(self, name)} must be positive")
    if self.head_dim is None and self.n_heads > 0 and self.d_model % self.n_heads:
      problems.append(
          f"n_heads={self.n_heads} does not divide d_model={self.d_model} "
          "(set head_dim explicitly for such shapes)")
    if self.n_heads > 0 and self.kv_heads > 0 and self.n_heads % self.kv_heads:
      problems.append(
          f"n_kv_heads={self.kv_heads} does not divide n_heads={self.n_heads}")
    if self.kv_heads <= 0:
      problems.append(f"n_kv_heads={self.n_kv_heads} must be positive")
    if self.family == "gpt2" and self.kv_heads != self.n_heads:
      problems.append("family='gpt2' has no grouped-query attention: "
                      f"n_kv_heads={self.n_kv_heads} must equal n_heads={self.n_heads}")
    if self.rope_scaling is not None:
      kind = dict(self.rope_scaling).get("rope_type")
      if kind not in ROPE_SCALING_TYPES:
        problems.append(f"rope_scaling.rope_type={kind!r} is not one of {ROPE_SCALING_TYPES}")
    if not 0.0 <= self.dropout_rate < 1.0:
      problems.append(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        problems.append(f"{name}={getattr(self, name)!r} must be float32, bfloat16 or float16")
    if self.num_reward_heads < 0:
      problems.append(f"num_reward_heads={self.num_reward_heads} must be >= 0")
    if self.lora_rank < 0:
      problems.append(f"lora_rank={self.lora_rank} must be >= 0 (0 = no adapters)")
    if self.lora_rank and self.lora_alpha <= 0:
      problems.append(f"lora_alpha={self.lora_alpha} must be > 0")
    unknown = [t for t in self.lora_target_names if t not in LORA_TARGETS]
    if unknown or (self.lora_rank and not self.lora_target_names):
      problems.append(f"lora_targets={self.lora_targets!r} must be comma-separated names "
                      f"from {LORA_TARGETS}")
    if problems:
      raise ValueError("Invalid ModelConfig: " + "; ".join(problems))

  @property
  def kv_heads(self) -> int:
    return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

  @property
  def lora_target_names(self) -> tuple[str, ...]:
    """The adapted projections: ``lora_targets`` split at commas."""
    return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())

  @property
  def dim_per_head(self) -> int:
    return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> ModelConfig:
    return dataclasses.replace(self, **changes)


def s0(**overrides) -> ModelConfig:
  """Benchmark shape S0: Llama-style, vocab 512, d 256, 4 layers, 4 heads, ff 688."""
  return ModelConfig(**overrides)


def tiny_llama(**overrides) -> ModelConfig:
  """A few-thousand-parameter Llama with GQA, for tests."""
  base = dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
              d_ff=128, max_seq_len=128)
  return ModelConfig(**{**base, **overrides})


def tiny_gpt2(**overrides) -> ModelConfig:
  base = dict(family="gpt2", vocab_size=128, d_model=64, n_layers=2, n_heads=4,
              d_ff=256, max_seq_len=128, tie_embeddings=True)
  return ModelConfig(**{**base, **overrides})


def smollm2_135m(**overrides) -> ModelConfig:
  """SmolLM2-135M(-Instruct): 30 layers, d 576, 9 heads / 3 KV heads, tied embeddings."""
  base = dict(vocab_size=49_152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
              d_ff=1536, max_seq_len=8192, rope_theta=100_000.0, norm_eps=1e-5,
              tie_embeddings=True)
  return ModelConfig(**{**base, **overrides})


PRESETS = {"s0": s0, "tiny_llama": tiny_llama, "tiny_gpt2": tiny_gpt2,
           "smollm2_135m": smollm2_135m}
