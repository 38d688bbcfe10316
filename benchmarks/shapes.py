"""The model shapes every benchmark runs at: presets, free overrides, both sides' configs.

A shape is a Llama-style decoder (vocabulary, width, depth, heads, MLP width) and a
sequence length. ``--shape`` picks a preset; ``--d-model --layers --heads --d-ff --vocab
--seq`` override its numbers. Our ``ModelConfig`` and the peer's ``transformers.LlamaConfig``
are built from the same numbers, so both sides run the same architecture. Batches scale
with the shape (``rows``) so that a step holds the same number of tokens at every shape.
"""

from __future__ import annotations

import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the benchmarks import rmjax from this checkout
  sys.path.insert(0, ROOT)


@dataclasses.dataclass(frozen=True)
class Shape:
  name: str
  vocab: int
  d_model: int
  layers: int
  heads: int
  d_ff: int
  seq: int  # tokens per sequence: per side in training, prompt + response in sampling


PRESETS = {
    "s0": Shape("s0", vocab=512, d_model=256, layers=4, heads=4, d_ff=688, seq=128),
    "s1": Shape("s1", vocab=2048, d_model=384, layers=6, heads=6, d_ff=1024, seq=256),
    "s2": Shape("s2", vocab=4096, d_model=512, layers=8, heads=8, d_ff=1376, seq=512),
}
FIELDS = ("vocab", "d_model", "layers", "heads", "d_ff", "seq")
FLAGS = ("shape", *FIELDS)  # what a parent passes on to its children


def add_flags(parser) -> None:
  parser.add_argument("--shape", choices=sorted(PRESETS), default="s0",
                      help="preset shape; the flags below override its numbers")
  for field in FIELDS:
    parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=None,
                        help=f"override the preset's {field}")


def resolve(args) -> Shape:
  """The preset with the flags' overrides; writes the resolved numbers back to ``args``
  (so that children get them) and names a changed preset ``<preset>+`` (``args.shape``
  keeps the preset's name)."""
  base = PRESETS[args.shape]
  changes = {f: getattr(args, f) for f in FIELDS
             if getattr(args, f) is not None and getattr(args, f) != getattr(base, f)}
  shape = dataclasses.replace(base, **changes, name=base.name + ("+" if changes else ""))
  for field in FIELDS:
    setattr(args, field, getattr(shape, field))
  if shape.d_model % shape.heads:
    raise SystemExit(f"--heads {shape.heads} does not divide --d-model {shape.d_model}")
  return shape


def of(args) -> Shape:
  """The shape a child was given (every field set by the parent's ``resolve``)."""
  return Shape(args.shape, *(getattr(args, f) for f in FIELDS))


def rows(s0_rows: int, shape: Shape) -> int:
  """A batch of ``s0_rows`` at S0's 128 tokens scaled to the same tokens at ``shape``."""
  return max(1, s0_rows * PRESETS["s0"].seq // shape.seq)


def model_config(shape: Shape, **overrides):
  """rmjax ``ModelConfig`` of the shape (float32, untied, no GQA)."""
  from rmjax.models.config import ModelConfig
  return ModelConfig(vocab_size=shape.vocab, d_model=shape.d_model, n_layers=shape.layers,
                     n_heads=shape.heads, d_ff=shape.d_ff,
                     max_seq_len=max(2048, shape.seq), **overrides)


def hf_config(cfg, **extra):
  """``transformers.LlamaConfig`` with the numbers of rmjax ``cfg`` (pad id 0, EOS 1)."""
  from transformers import LlamaConfig
  return LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.kv_heads, head_dim=cfg.dim_per_head,
      max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
      rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
      hidden_act="silu", attention_bias=False, mlp_bias=False,
      **{"bos_token_id": None, "eos_token_id": 1, "pad_token_id": 0, **extra})


def layer_matmul_params(cfg) -> int:
  """Non-embedding matmul parameters of all blocks (q, k, v, o, gate, up, down)."""
  h, kv, d = cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
  per_layer = cfg.d_model * (h + 2 * kv) * d + h * d * cfg.d_model + 3 * cfg.d_model * cfg.d_ff
  return cfg.n_layers * per_layer


def causal_attention_flops(cfg, tokens: int) -> float:
  """QK^T and PV FLOPs of one causal sequence of ``tokens`` (position p sees p + 1 keys)."""
  return 4 * cfg.n_heads * cfg.dim_per_head * cfg.n_layers * tokens * (tokens + 1) / 2


def describe(shape: Shape) -> dict:
  return dataclasses.asdict(shape)
