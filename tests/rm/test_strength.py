"""Preference strength around the math: folds, the strength file, the training options that
read it, and ``rmjax score-pairs`` end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmjax.commands import score_pairs
from rmjax.configs import score_pairs as score_pairs_config
from rmjax.configs import train_rm
from rmjax.data import schema
from rmjax.models.config import tiny_llama
from rmjax.models.transformer import Transformer
from rmjax.objectives import bt
from rmjax.objectives import preference_strength as ps
from rmjax.rm import batches as rm_batches
from rmjax.rm import strength
from rmjax.rm import trainer as rm_trainer
from rmjax.rm.load import single_device_mesh
from rmjax.rm.members import Layout
from rmjax.rm.step import ADAPTIVE_MARGIN, LABEL_SMOOTHING, make_loss_fn, pair_rewards


def test_folds_partition_the_pairs_and_members_skip_their_own():
  folds = strength.pair_folds(103, 3, seed=7)
  assert sorted(np.bincount(folds).tolist()) == [34, 34, 35]
  np.testing.assert_array_equal(folds, strength.pair_folds(103, 3, seed=7))
  assert not np.array_equal(folds, strength.pair_folds(103, 3, seed=8))
  for member in range(5):
    kept = strength.training_records(103, 3, 7, member)
    assert set(kept) == set(np.flatnonzero(folds != member % 3))


class GoldScorer:
  """A stand-in ensemble: member m's reward is the count of token 5 plus its own bias
  per sequence (independent of the label), so Δ tracks a known gold preference."""

  k = 4

  def __call__(self, tokens, mask):
    gold = jnp.sum((tokens == 5) & mask, axis=1).astype(jnp.float32)
    noise = jnp.stack([jnp.sin(jnp.sum(tokens * (m + 3), axis=1)) * 0.3
                       for m in range(self.k)], axis=1)
    return gold[:, None] + noise


def planted_pairs(n=60, flips=(3, 17, 40, 41)):
  """Pairs whose chosen side holds 4 or 5 fives and rejected side 1 or 2 (gold gap >= 2),
  with the labels of ``flips`` swapped."""
  rng = np.random.default_rng(0)
  chosen, rejected = np.full((2, n, 8), 7, np.int32)
  for i in range(n):
    chosen[i, rng.choice(8, 4 + i % 2, replace=False)] = 5
    rejected[i, rng.choice(8, 1 + i % 2, replace=False)] = 5
  for i in flips:
    chosen[i], rejected[i] = rejected[i].copy(), chosen[i].copy()
  mask = np.ones((n, 8), bool)
  return {schema.CHOSEN_TOKENS: chosen, schema.CHOSEN_MASK: mask,
          schema.REJECTED_TOKENS: rejected, schema.REJECTED_MASK: mask}, list(flips)


def test_planted_flips_get_the_lowest_strength():
  arrays, flips = planted_pairs()
  deltas = score_pairs.member_deltas(GoldScorer(), arrays, 16, single_device_mesh())
  assert deltas.shape == (60, 4)
  scored = strength.Strength.from_deltas(deltas, folds=2, seed=0, data_hash="h")
  assert scored.method == "out_of_fold"
  assert sorted(np.argsort(scored.mu)[:len(flips)].tolist()) == flips
  flipped = np.zeros(60, bool)
  flipped[flips] = True
  found = score_pairs.detection(scored.mu, flipped, lowest=0.2)
  assert found["auroc"] == 1.0
  assert found["precision_lowest_20pct"] == pytest.approx(4 / 12)


def test_strength_file_round_trip_and_checks(tmp_path):
  deltas = np.arange(12, dtype=np.float32).reshape(4, 3) - 5
  scored = strength.Strength.from_deltas(deltas, folds=0, seed=0, data_hash="abc")
  np.testing.assert_allclose(scored.mu, deltas.mean(1))
  np.testing.assert_allclose(scored.sigma, deltas.std(1), rtol=1e-6)
  assert scored.method == "in_sample"
  path = tmp_path / "s.npz"
  strength.save(path, scored)
  loaded = strength.load(path, "abc", 4)
  np.testing.assert_array_equal(loaded.deltas, deltas)
  assert loaded.method == "in_sample" and loaded.data_hash == "abc"
  with pytest.raises(ValueError, match="scored on data abc"):
    strength.load(path, "other", 4)
  with pytest.raises(ValueError, match="has 4 pairs; the training split has 5"):
    strength.load(path, "abc", 5)
  with pytest.raises(FileNotFoundError, match="rmjax score-pairs"):
    strength.load(tmp_path / "missing.npz")


def options(**values):
  cfg = train_rm.get_config().data.strength
  cfg.update(path="x", **values)
  return cfg


def test_options_flip_first_then_margin_and_smoothing_read_the_new_labels():
  mu = np.array([0.5, -2.0, -0.1, 3.0, 1.0], np.float32)
  opts = strength.StrengthOptions.from_config(
      options(flip_fraction=0.2, smoothing=0.3, adaptive_margin=True), mu)
  np.testing.assert_array_equal(opts.flip, [False, True, False, False, False])
  np.testing.assert_allclose(opts.margin, [0.5, 2.0, -0.1, 3.0, 1.0])
  np.testing.assert_allclose(opts.smoothing, [0, 0, 0.3, 0, 0])
  none = strength.StrengthOptions.from_config(options(), mu)
  assert not none.flip.any() and none.margin is None and none.smoothing is None


class Rows:
  def __init__(self, arrays):
    self.arrays = arrays

  def batch(self, step):
    return {k: v[[2, 0, 1]] for k, v in self.arrays.items()}


def test_strength_batches_swap_flipped_rows_and_add_per_pair_settings():
  arrays = {schema.CHOSEN_TOKENS: np.array([[1, 2], [3, 4], [5, 6]]),
            schema.REJECTED_TOKENS: np.array([[7, 8], [9, 10], [11, 12]]),
            schema.CHOSEN_MASK: np.array([[1, 1], [1, 0], [1, 1]], bool),
            schema.REJECTED_MASK: np.array([[1, 0], [1, 1], [1, 1]], bool),
            schema.FLIPPED: np.array([False, True, False]),
            schema.MARGIN: np.zeros(3, np.float32), strength.INDEX: np.arange(3)}
  opts = strength.StrengthOptions(flip=np.array([False, True, False]),
                          margin=np.array([1.0, 2.0, 3.0], np.float32),
                          smoothing=np.array([0.0, 0.1, 0.0], np.float32))
  out = strength.StrengthBatches(Rows(arrays), opts).batch(0)  # rows 2, 0, 1
  np.testing.assert_array_equal(out[schema.CHOSEN_TOKENS], [[5, 6], [1, 2], [9, 10]])
  np.testing.assert_array_equal(out[schema.REJECTED_TOKENS], [[11, 12], [7, 8], [3, 4]])
  np.testing.assert_array_equal(out[schema.CHOSEN_MASK][2], [True, True])
  np.testing.assert_array_equal(out[schema.REJECTED_MASK][2], [True, False])
  np.testing.assert_array_equal(out[schema.FLIPPED], [False, False, False])
  np.testing.assert_allclose(out[ADAPTIVE_MARGIN], [3.0, 1.0, 2.0])
  np.testing.assert_allclose(out[LABEL_SMOOTHING], [0.0, 0.0, 0.1])
  np.testing.assert_array_equal(out[schema.MARGIN], 0)  # the data's own margin is kept


def test_per_pair_margin_and_smoothing_reach_the_loss():
  model = Transformer(tiny_llama(vocab_size=16, d_model=16, n_layers=1, n_heads=2,
                                 n_kv_heads=1, d_ff=32, max_seq_len=8, lm_head=False,
                                 num_reward_heads=1), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  rng = np.random.default_rng(1)
  batch = {schema.CHOSEN_TOKENS: rng.integers(3, 16, (4, 6)).astype(np.int32),
           schema.REJECTED_TOKENS: rng.integers(3, 16, (4, 6)).astype(np.int32),
           schema.CHOSEN_MASK: np.ones((4, 6), bool), schema.REJECTED_MASK: np.ones((4, 6), bool),
           schema.MARGIN: np.full(4, 9.0, np.float32), schema.WEIGHT: np.ones(4, np.float32),
           ADAPTIVE_MARGIN: np.array([0.5, -1.0, 0.0, 2.0], np.float32),
           LABEL_SMOOTHING: np.array([0.0, 0.2, 0.0, 0.1], np.float32)}
  loss_cfg = train_rm.get_config().loss
  loss_cfg.use_margin = True  # the adaptive margin replaces the data's margin column
  loss, _ = make_loss_fn(graphdef, loss_cfg)(params, batch, jax.random.key(0))
  r_c, r_r = pair_rewards(model, batch)
  delta = np.asarray(r_c - r_r, np.float64) - batch[ADAPTIVE_MARGIN]
  alpha = batch[LABEL_SMOOTHING]
  log_sig = lambda x: -np.logaddexp(0, -x)
  expected = np.mean(-((1 - alpha) * log_sig(delta) + alpha * log_sig(-delta)))
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  by_bt, _ = bt.bradley_terry_loss(r_c, r_r, margin=batch[ADAPTIVE_MARGIN], label_smoothing=alpha)
  assert float(loss) == pytest.approx(float(by_bt), rel=1e-6)


def test_folds_need_separate_members():
  with pytest.raises(ValueError, match="ensemble.folds=2 needs separate members"):
    Layout(k=2, shared_backbone=True, folds=2)
  with pytest.raises(ValueError, match="2 <= folds <= k=2"):
    Layout(k=2, folds=3)


def small_config(workdir, **ensemble):
  config = train_rm.get_config()
  config.ensemble.update(**ensemble)
  config.data.synthetic.update(num_train_pairs=96, num_eval_pairs=32, label_noise=0.25)
  config.model.update(d_model=32, d_ff=64, n_layers=1)  # one block: half the compile time
  config.train.update(steps=4, batch_size=16, log_every=2, eval_every=4, save_every=4,
                      workdir=str(workdir))
  return config


@pytest.mark.slow
def test_score_pairs_then_train_with_the_strength_options(tmp_path):
  ensemble_config = small_config(tmp_path / "ensemble", k=2, folds=2)
  data = rm_batches.load(ensemble_config.data, 16, 0, Layout(k=2, folds=2))
  held_out = strength.pair_folds(96, 2, 0)
  for member, source in enumerate(data.train.sources):
    seen = np.concatenate([source.batch(s)[strength.INDEX] for s in range(12)])
    assert set(seen.tolist()) == set(np.flatnonzero(held_out != member).tolist())
  rm_trainer.train(ensemble_config)
  config = score_pairs_config.get_config()
  config.workdir = str(tmp_path / "ensemble")
  result = score_pairs.run(config)
  assert result["method"] == "out_of_fold" and result["pairs"] == 96
  scored = strength.load(result["output"])
  # The reported AUROC is that of −μ in the written file against the split's known swaps
  # (the sign matters: +μ would give 1 − AUROC).
  flipped = rm_batches.train_pairs(ensemble_config.data)[schema.FLIPPED]
  assert flipped.sum() == 24
  assert result["auroc"] == pytest.approx(ps.auroc(-scored.mu, flipped), abs=1e-9)
  # Out of fold: pair i's strength is the Δ of the one member that held its fold out.
  np.testing.assert_allclose(scored.mu, scored.deltas[np.arange(96), scored.pair_fold])
  train_config = small_config(tmp_path / "flip")
  train_config.data.strength.update(path=result["output"], flip_fraction=0.25,
                                    adaptive_margin=True, smoothing=0.1)
  batch = rm_batches.load(train_config.data, 16, 0).train.batch(0)
  assert {ADAPTIVE_MARGIN, LABEL_SMOOTHING} <= set(batch)
  metrics = rm_trainer.train(train_config)["eval"]
  assert np.isfinite(metrics["accuracy"])
  train_config.data.strength.path = str(tmp_path / "ensemble" / "nothing.npz")
  with pytest.raises(FileNotFoundError, match="data.strength.path="):
    rm_trainer.train(train_config)
