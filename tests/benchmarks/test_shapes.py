"""The benchmarks' shapes and workloads: what both sides are built from must be right."""

import argparse
import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import generation  # noqa: E402
import rm_train  # noqa: E402
import shapes  # noqa: E402

from rmjax.models.transformer import Transformer  # noqa: E402


def flags(*argv):
  parser = argparse.ArgumentParser()
  shapes.add_flags(parser)
  return parser.parse_args(list(argv))


def test_presets_overrides_and_scaled_batches():
  args = flags("--shape", "s2")
  assert shapes.resolve(args) == shapes.PRESETS["s2"]
  assert (args.d_model, args.layers, args.vocab, args.seq) == (512, 8, 4096, 512)
  args = flags("--shape", "s1", "--d-model", "256", "--heads", "4")
  shape = shapes.resolve(args)
  assert shape.name == "s1+" and args.shape == "s1"
  assert (shape.d_model, shape.heads, shape.layers, args.d_model) == (256, 4, 6, 256)
  assert shapes.of(args) == shapes.Shape("s1", *(getattr(shape, f) for f in shapes.FIELDS))
  assert [shapes.rows(16, shapes.PRESETS[n]) for n in ("s0", "s1", "s2")] == [16, 8, 4]
  with pytest.raises(SystemExit, match="does not divide"):
    shapes.resolve(flags("--heads", "3"))


def test_flop_counts_match_the_models_parameters():
  """layer_matmul_params against the built model's own block matrices."""
  cfg = shapes.model_config(shapes.PRESETS["s0"], lm_head=False)
  state = nnx.state(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  counted = sum(int(np.prod(leaf.shape)) for path, leaf in
                jax.tree_util.tree_leaves_with_path(state)
                if "blocks" in jax.tree_util.keystr(path) and len(leaf.shape) >= 2)
  assert shapes.layer_matmul_params(cfg) == counted
  # Causal attention by hand: 2 tokens, 1 layer, 1 head of 4 dims -> 4*4*(1 + 2).
  tiny = shapes.model_config(shapes.Shape("t", 8, 4, 1, 1, 8, 2))
  assert shapes.causal_attention_flops(tiny, 2) == 4 * 4 * 3
  hf = shapes.hf_config(cfg, num_labels=1)
  assert (hf.hidden_size, hf.intermediate_size, hf.num_hidden_layers, hf.vocab_size,
          hf.num_labels, hf.pad_token_id) == (256, 688, 4, 512, 1, 0)


def test_decode_bytes_by_hand():
  """Weights each step plus the cache so far: 2 steps after a 3-token prompt."""
  cfg = shapes.model_config(shapes.Shape("t", 8, 4, 1, 1, 8, 6))
  args = argparse.Namespace(dtype="float32", batch=2, prompt=3, new=3)
  weights = 4 * (4 * 4 * 4 + 3 * 4 * 8 + 4 * 8)  # qkvo, gate/up/down, LM head
  per_token = 4 * 2 * 1 * 1 * 4 * 2  # bytes x (k, v) x layers x heads x dims x batch
  assert generation.decode_bytes(cfg, args) == 2 * weights + per_token * (4 + 5)


@pytest.mark.parametrize("workload", ["random", "hh"])
def test_workload_pairs_are_cut_as_the_trainer_cuts(workload):
  args = argparse.Namespace(workload=workload, pairs=4, seq=64, vocab=50, warmup=2,
                            windows=1, window_steps=3)
  arrays = rm_train.workload_pairs(args)
  rows = 4 * 5
  assert arrays["chosen_tokens"].shape == (rows, 64)
  for side in ("chosen", "rejected"):
    mask, tokens = arrays[f"{side}_mask"], arrays[f"{side}_tokens"]
    n = mask.sum(1)
    assert (mask == (np.arange(64)[None] < n[:, None])).all()  # right-padded
    assert (tokens[mask] >= 1).all() and (tokens[~mask] == 0).all()  # 0 is only padding
    assert (n - arrays["prompt_len"] <= (64 if workload == "random" else 48)).all()
  table = np.loadtxt(rm_train.HH_LENGTHS, dtype=np.int64, delimiter=",")
  if workload == "hh":
    p, c, r = table[:rows].T
    short = p + np.maximum(c, r) <= 64
    short &= np.maximum(c, r) <= 48
    assert short.any()  # pairs under the cap keep their measured lengths
    np.testing.assert_array_equal(arrays["prompt_len"][short], p[short])
    np.testing.assert_array_equal(arrays["chosen_mask"].sum(1)[short], (p + c)[short])
    # Both sides of a pair share its prompt's tokens.
    i = int(np.argmax(arrays["prompt_len"]))
    k = arrays["prompt_len"][i]
    np.testing.assert_array_equal(arrays["chosen_tokens"][i, :k], arrays["rejected_tokens"][i, :k])
  else:
    assert (arrays["prompt_len"] == 0).all() and arrays["chosen_mask"].all()
  batches = rm_train.step_batches(arrays, args)
  assert len(batches) == 5
  assert ("packed_tokens" in batches[0]) == (workload == "hh")
