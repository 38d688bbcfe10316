"""HF checkpoint import/export against transformers' own torch models."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from rmjax.models.hf_io import config_from_hf, load_hf, save_hf
from rmjax.models.transformer import Transformer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_LLAMA = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=128, bos_token_id=1, eos_token_id=2)
CASES = {
    "llama_tied_gqa": ("LlamaConfig", dict(_LLAMA, tie_word_embeddings=True)),
    "llama_untied": ("LlamaConfig", dict(_LLAMA, tie_word_embeddings=False, rms_norm_eps=1e-5)),
    "llama3_rope": ("LlamaConfig", dict(_LLAMA, rope_theta=500_000.0, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    "llama_linear_rope": ("LlamaConfig", dict(_LLAMA, rope_scaling=dict(
        rope_type="linear", factor=2.0))),
    "qwen2": ("Qwen2Config", dict(_LLAMA, tie_word_embeddings=True)),
    "gpt2": ("GPT2Config", dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=32,
                                bos_token_id=0, eos_token_id=0)),
}


def _torch_model(case, folder):
  """A tiny HF causal LM with every parameter (norms and biases too) randomised, saved."""
  config_cls, kwargs = CASES[case]
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(
      getattr(transformers, config_cls)(**kwargs)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(folder, safe_serialization=True)
  return model


def _tokens():
  return np.random.default_rng(0).integers(0, 128, (2, 12))


def _torch_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


def _our_logits(model, tokens):
  hidden, _ = model(jnp.asarray(tokens))
  return np.asarray(model.logits(hidden))


def _assert_close(ours, ref):
  err = np.max(np.abs(ours - ref)) / max(1.0, np.max(np.abs(ref)))
  assert err < 1e-4, f"relative max error {err:.2e}"


@pytest.mark.parametrize("case", list(CASES))
def test_load_matches_transformers(case, tmp_path):
  reference = _torch_model(case, tmp_path)
  model = load_hf(tmp_path)
  assert model.cfg.tie_embeddings == reference.config.tie_word_embeddings
  _assert_close(_our_logits(model, _tokens()), _torch_logits(reference, _tokens()))


@pytest.mark.parametrize("case", list(CASES))
def test_save_round_trip(case, tmp_path):
  reference = _torch_model(case, tmp_path / "hf")
  save_hf(load_hf(tmp_path / "hf"), tmp_path / "ours")
  # Same tensor names and values as transformers' own file (so no lm_head when tied).
  theirs = safetensors.numpy.load_file(tmp_path / "hf" / "model.safetensors")
  ours = safetensors.numpy.load_file(tmp_path / "ours" / "model.safetensors")
  assert sorted(ours) == sorted(theirs)
  for name in theirs:
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
  _assert_close(_torch_logits(reloaded, _tokens()), _torch_logits(reference, _tokens()))


def test_fresh_model_saves_and_loads_in_transformers(tmp_path):
  config = config_from_hf(transformers.Qwen2Config(**_LLAMA).to_dict())
  model = Transformer(config, rngs=nnx.Rngs(3))
  save_hf(model, tmp_path)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
  _assert_close(_torch_logits(reloaded, _tokens()), _our_logits(model, _tokens()))


def test_sharded_checkpoint(tmp_path):
  reference = _torch_model("llama_untied", tmp_path)
  reference.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="40KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  (tmp_path / "model.safetensors").unlink(missing_ok=True)
  _assert_close(_our_logits(load_hf(tmp_path), _tokens()), _torch_logits(reference, _tokens()))


def test_bfloat16_checkpoint(tmp_path):
  _torch_model("llama_tied_gqa", tmp_path / "f32").to(torch.bfloat16).save_pretrained(
      tmp_path / "bf16", safe_serialization=True)
  # The bf16-rounded weights in float32 (not .float() after .to(bf16): that also rounds
  # the rotary frequencies).
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "bf16", dtype=torch.float32).eval()
  model = load_hf(tmp_path / "bf16")
  assert model.embed[...].dtype == jnp.float32
  _assert_close(_our_logits(model, _tokens()), _torch_logits(reference, _tokens()))
  save_hf(load_hf(tmp_path / "bf16", param_dtype="bfloat16"), tmp_path / "ours")
  theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype="auto")
  assert theirs.dtype == torch.bfloat16


def test_config_fields_and_overrides(tmp_path):
  _torch_model("llama3_rope", tmp_path)
  config = config_from_hf(json.loads((tmp_path / "config.json").read_text()))
  assert (config.n_kv_heads, config.head_dim, config.rope_theta) == (2, 16, 500_000.0)
  assert dict(config.rope_scaling)["rope_type"] == "llama3"
  assert load_hf(tmp_path, param_dtype="bfloat16").embed[...].dtype == jnp.bfloat16


def test_heads_absent_from_checkpoint_are_initialised(tmp_path):
  _torch_model("qwen2", tmp_path)
  model = load_hf(tmp_path, num_reward_heads=2, value_head=True, seed=5)
  fresh = Transformer(model.cfg, rngs=nnx.Rngs(5))  # what a fresh model would hold
  np.testing.assert_array_equal(model.reward_head[...], fresh.reward_head[...])
  np.testing.assert_array_equal(model.value_head[...], fresh.value_head[...])


def test_missing_tensor_is_named(tmp_path):
  _torch_model("llama_untied", tmp_path)
  path = tmp_path / "model.safetensors"
  tensors = safetensors.numpy.load_file(path)
  tensors["model.layers.1.mlp.up_proj.wrong_name"] = tensors.pop("model.layers.1.mlp.up_proj.weight")
  safetensors.numpy.save_file(tensors, path)
  with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*wrong_name"):
    load_hf(tmp_path)


def test_shape_mismatch_names_both_shapes(tmp_path):
  _torch_model("llama_tied_gqa", tmp_path)
  with pytest.raises(ValueError, match=r"gate_proj\.weight: expected shape \(96, 64\), "
                                       r"found \(128, 64\)"):
    load_hf(tmp_path, d_ff=96)


def test_unsupported_config_is_refused():
  with pytest.raises(ValueError, match="model_type"):
    config_from_hf({"model_type": "bert"})
  with pytest.raises(ValueError, match="yarn"):
    config_from_hf(dict(_LLAMA, model_type="llama", rope_parameters={"rope_type": "yarn"}))
