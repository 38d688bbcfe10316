"""Reward models as HF sequence classifiers and policies as causal LMs, checked against
transformers' own torch classes on right-padded batches."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmjax.models import config as model_config
from rmjax.models.hf_classifier import classifier_tensors, save_classifier
from rmjax.models.hf_io import save_hf
from rmjax.models.transformer import Transformer, sequence_rewards

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_SMALL = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16)
CASES = {  # name: (config, expected architecture)
    "llama_k1_gqa_untied": (model_config.tiny_llama(**_SMALL, n_kv_heads=2, num_reward_heads=1),
                            "LlamaForSequenceClassification"),
    "llama_k3_gqa_tied": (model_config.tiny_llama(**_SMALL, n_kv_heads=2, num_reward_heads=3,
                                                  tie_embeddings=True, lm_head=False),
                          "LlamaForSequenceClassification"),
    "qwen2_k2": (model_config.tiny_llama(**_SMALL, n_kv_heads=4, qkv_bias=True,
                                         num_reward_heads=2, rope_theta=1e6),
                 "Qwen2ForSequenceClassification"),
    "gpt2_k2": (model_config.tiny_gpt2(**_SMALL, num_reward_heads=2),
                "GPT2ForSequenceClassification"),
}
PAD = 0


def random_model(cfg, seed=0):
  """``Transformer(cfg)`` with every parameter random (norm scales 1 + N(0, 0.1²), the rest
  N(0, 0.2²)), drawn by NumPy into an abstract model: no initialiser compiles."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    scale = path[-1].key == "scale"
    return jnp.asarray(scale + (0.1 if scale else 0.2) * rng.standard_normal(x.shape), x.dtype)

  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state)))
  return nnx.merge(graphdef, state)


def padded_batch(vocab, seed=0):
  """Right-padded tokens int32 [4, 10] and mask bool [4, 10]: lengths 10, 7, 3, 1, real
  tokens never the pad id."""
  rng = np.random.default_rng(seed)
  lengths = np.array([10, 7, 3, 1])
  mask = np.arange(10)[None] < lengths[:, None]
  tokens = np.where(mask, rng.integers(1, vocab, mask.shape), PAD).astype(np.int32)
  return tokens, mask


def torch_scores(folder, tokens, mask, cls=transformers.AutoModelForSequenceClassification):
  model = cls.from_pretrained(folder, dtype=torch.float32).eval()
  with torch.no_grad():
    return model(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))
                 ).logits.numpy(), model


@pytest.mark.parametrize("case", list(CASES))
def test_classifier_scores_match_transformers(case, tmp_path):
  cfg, architecture = CASES[case]
  model = random_model(cfg)
  save_classifier(model, tmp_path, pad_token_id=PAD)
  tokens, mask = padded_batch(cfg.vocab_size)
  theirs, hf_model = torch_scores(tmp_path, tokens, mask)
  assert type(hf_model).__name__ == architecture
  assert hf_model.config.num_labels == cfg.num_reward_heads
  assert hf_model.config.problem_type == "regression"
  ours = np.asarray(nnx.jit(sequence_rewards)(model, tokens, mask))
  assert theirs.shape == ours.shape == (4, cfg.num_reward_heads)
  np.testing.assert_allclose(theirs, ours, atol=1e-4)
  assert np.std(ours) > 1e-3  # the rows differ, so a wrong read position would show


def test_classifier_with_chosen_heads_and_strict_loading(tmp_path):
  cfg = CASES["llama_k3_gqa_tied"][0]
  model = random_model(cfg, seed=1)
  save_classifier(model, tmp_path, pad_token_id=PAD, heads=[2])
  tokens, mask = padded_batch(cfg.vocab_size, seed=1)
  theirs, hf_model = torch_scores(tmp_path, tokens, mask,
                                  transformers.LlamaForSequenceClassification)
  assert hf_model.config.id2label == {0: "reward"}
  ours = np.asarray(nnx.jit(sequence_rewards)(model, tokens, mask))
  np.testing.assert_allclose(theirs, ours[:, 2:], atol=1e-4)
  # Every tensor transformers expects is in the file, and nothing else.
  expected = set(hf_model.state_dict())
  assert set(classifier_tensors(model)) == expected
  with pytest.raises(ValueError, match=r"reward heads \[3\] out of range: the model has 3"):
    classifier_tensors(model, [3])


def test_classifier_needs_reward_heads():
  model = random_model(model_config.tiny_llama(**_SMALL))
  with pytest.raises(ValueError, match="num_reward_heads=0"):
    classifier_tensors(model)


@pytest.mark.parametrize("tied", [False, True])
def test_policy_logits_match_transformers(tied, tmp_path):
  cfg = model_config.tiny_llama(**_SMALL, n_kv_heads=2, tie_embeddings=tied)
  model = random_model(cfg, seed=2)
  save_hf(model, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [
      "LlamaForCausalLM"]
  tokens, mask = padded_batch(cfg.vocab_size, seed=2)
  hf_model = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = hf_model(torch.tensor(tokens),
                      attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
  ours = np.asarray(nnx.jit(lambda model: model.logits(model(tokens, mask)[0]))(model))
  np.testing.assert_allclose(theirs[mask], ours[mask], atol=1e-4)
