"""Conversions between the usual per-projection weights and our fused layouts.

Checkpoint formats (Hugging Face, GGUF) store separate query/key/value and
gate/up projections; the model keeps them fused (see ``Attention`` and ``Mlp``).
These pure NumPy functions are the only place that knows the fused order.
"""

from __future__ import annotations

import numpy as np


def fuse_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
  """q [..., heads, d], k and v [..., kv_heads, d] -> [..., kv_heads, groups + 2, d].

  Query head ``h`` belongs to KV head ``h // groups``, as in grouped-query attention.
  Works for kernels ([embed, heads, d]) and biases ([heads, d]) alike.
  """
  kv = k.shape[-2]
  heads, d = q.shape[-2:]
  if heads % kv:
    raise ValueError(f"{heads} query heads are not a multiple of {kv} KV heads")
  q = q.reshape(*q.shape[:-2], kv, heads // kv, d)
  return np.concatenate([q, k[..., None, :], v[..., None, :]], axis=-2)


def split_qkv(qkv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Inverse of ``fuse_qkv``: -> q [..., heads, d], k [..., kv, d], v [..., kv, d]."""
  kv, groups_plus_2, d = qkv.shape[-3:]
  q = qkv[..., :groups_plus_2 - 2, :].reshape(*qkv.shape[:-3], kv * (groups_plus_2 - 2), d)
  return q, qkv[..., -2, :], qkv[..., -1, :]


def fuse_gate_up(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
  """gate, up [embed, d_ff] -> [embed, 2, d_ff]."""
  return np.stack([gate, up], axis=1)


def split_gate_up(gate_up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  return gate_up[:, 0], gate_up[:, 1]
