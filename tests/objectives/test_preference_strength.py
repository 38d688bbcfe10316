"""Preference strength, flipping, smoothing, margins, MetaRM's difference loss and AUROC."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax.objectives.bt import bradley_terry_loss
from rmjax.objectives.preference_strength import (
  adaptive_margin,
  auroc,
  flip_lowest,
  metarm_difference_loss,
  out_of_fold_strength,
  preference_strength,
  smoothing_where_negative,
)


def sig(x):
  return 1.0 / (1.0 + math.exp(-x))


def f32(*xs):
  return jnp.asarray(xs, jnp.float32)


def test_strength_hand_values():
  # Pair 0: Δ = 1, 3 → μ 2, σ 1. Pair 1: Δ = −2, −2 → μ −2, σ 0. Pair 2: 0, 4 → μ 2, σ 2.
  mu, sd = preference_strength(jnp.array([[1.0, 3.0], [-2.0, -2.0], [0.0, 4.0]]))
  np.testing.assert_allclose(mu, [2.0, -2.0, 2.0])
  np.testing.assert_allclose(sd, [1.0, 0.0, 2.0])  # population std, not 1/(M − 1)
  assert mu.dtype == jnp.float32
  mu16, _ = preference_strength(jnp.ones((2, 3), jnp.bfloat16))
  assert mu16.dtype == jnp.float32


def test_out_of_fold_uses_exactly_the_held_out_members():
  # Members 0 and 2 never saw fold 0, member 1 never saw fold 1.
  deltas = jnp.array([[1.0, 100.0, 3.0],     # fold 0 → members 0, 2 → μ 2, σ 1
                      [100.0, -5.0, 100.0],  # fold 1 → member 1 → μ −5, σ 0
                      [10.0, 100.0, 20.0]])  # fold 0 → μ 15, σ 5
  mu, sd = out_of_fold_strength(deltas, member_fold=[0, 1, 0], pair_fold=[0, 1, 0])
  np.testing.assert_allclose(mu, [2.0, -5.0, 15.0])
  np.testing.assert_allclose(sd, [1.0, 0.0, 5.0])
  # When every member holds out the same fold it is the in-sample statistic.
  full = out_of_fold_strength(deltas, [7, 7, 7], [7, 7, 7])
  for got, want in zip(full, preference_strength(deltas)):
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_out_of_fold_errors():
  deltas = jnp.zeros((3, 2))
  with pytest.raises(ValueError, match="no out-of-fold member"):
    out_of_fold_strength(deltas, member_fold=[0, 1], pair_fold=[0, 2, 1])
  with pytest.raises(ValueError, match="member_fold"):
    out_of_fold_strength(deltas, member_fold=[0, 1, 2], pair_fold=[0, 1, 0])
  with pytest.raises(ValueError, match="pair_fold"):
    out_of_fold_strength(deltas, member_fold=[0, 1], pair_fold=[0, 1])
  with pytest.raises(ValueError, match="member_deltas"):
    out_of_fold_strength(jnp.zeros(3), member_fold=[0], pair_fold=[0, 0, 0])


def test_flip_lowest_count_and_ties():
  mu = f32(0.5, -1.0, 0.2, -1.0, 3.0)
  np.testing.assert_array_equal(flip_lowest(mu, 0.2), [False, True, False, False, False])
  np.testing.assert_array_equal(flip_lowest(mu, 0.4), [False, True, False, True, False])
  np.testing.assert_array_equal(flip_lowest(mu, 0.6), [False, True, True, True, False])
  assert not flip_lowest(mu, 0.0).any() and flip_lowest(mu, 1.0).all()
  # All tied: the lowest indices go first.
  np.testing.assert_array_equal(flip_lowest(jnp.zeros(4), 0.5), [True, True, False, False])
  # 0.1 · 25 = 2.5 rounds up to 3 (Python's round would give 2); 0.2 · 10 = 2.
  assert int(flip_lowest(jnp.arange(25.0), 0.1).sum()) == 3
  assert int(flip_lowest(jnp.arange(10.0), 0.2).sum()) == 2


def test_flip_lowest_finds_planted_flips():
  # Clean pairs: every member agrees the label is right; planted flips: members disagree.
  rng = np.random.default_rng(0)
  deltas = rng.normal(2.0, 0.5, size=(50, 5))
  planted = np.zeros(50, bool)
  planted[rng.choice(50, 10, replace=False)] = True
  deltas[planted] *= -1
  mu, _ = preference_strength(deltas)
  np.testing.assert_array_equal(flip_lowest(mu, 0.2), planted)
  assert auroc(-np.asarray(mu), planted) == 1.0


def test_flip_lowest_errors():
  with pytest.raises(ValueError, match="fraction"):
    flip_lowest(f32(1.0, 2.0), 1.5)
  with pytest.raises(ValueError, match="fraction"):
    flip_lowest(f32(1.0, 2.0), jnp.float32(0.5))
  with pytest.raises(ValueError, match="mu"):
    flip_lowest(jnp.zeros((2, 2)))


def test_smoothing_where_negative():
  mu = f32(-0.5, 0.0, 2.0, -3.0)
  np.testing.assert_allclose(smoothing_where_negative(mu, 0.1), [0.1, 0.0, 0.0, 0.1])
  with pytest.raises(ValueError, match="alpha"):
    smoothing_where_negative(mu, -0.1)
  with pytest.raises(ValueError, match="mu"):
    smoothing_where_negative(jnp.zeros((2, 2)), 0.1)


def test_per_pair_smoothing_in_bt():
  rc, rr, mu = f32(1.0, -0.5, 2.0), f32(0.0, 0.3, 2.5), f32(-1.0, 0.5, -0.2)
  plain, _ = bradley_terry_loss(rc, rr)
  zero, _ = bradley_terry_loss(rc, rr, label_smoothing=smoothing_where_negative(mu, 0.0))
  assert float(zero) == float(plain)
  # bt takes α per pair; it agrees with its own mask form and with the hand formula.
  per_pair, _ = bradley_terry_loss(rc, rr, label_smoothing=smoothing_where_negative(mu, 0.2))
  masked, _ = bradley_terry_loss(rc, rr, label_smoothing=0.2, smoothing_mask=mu < 0)
  assert float(per_pair) == pytest.approx(float(masked), abs=1e-7)
  want = np.mean([-(0.8 * math.log(sig(1.0)) + 0.2 * math.log(sig(-1.0))),
                  -math.log(sig(-0.8)),
                  -(0.8 * math.log(sig(-0.5)) + 0.2 * math.log(sig(0.5)))])
  assert float(per_pair) == pytest.approx(want, abs=1e-6)


def test_adaptive_margin():
  mu = f32(0.5, -1.0)
  loss, _ = bradley_terry_loss(f32(1.0, 1.0), f32(0.0, 0.0), margin=adaptive_margin(mu))
  want = (-math.log(sig(0.5)) - math.log(sig(2.0))) / 2  # −log σ(Δ − μ)
  assert float(loss) == pytest.approx(want, abs=1e-6)
  grad = jax.grad(lambda m: jnp.sum(adaptive_margin(m) ** 2))(mu)
  np.testing.assert_array_equal(grad, [0.0, 0.0])


def test_metarm_difference_loss_k3():
  r = f32(0.0, 1.0, 3.0)
  # |gaps| 1, 3, 2; J = (2/9)(σ(1) + σ(3) + σ(2)).
  want = 2.0 / 9.0 * (sig(1.0) + sig(3.0) + sig(2.0))
  assert float(metarm_difference_loss(r[None])) == pytest.approx(want, abs=1e-6)
  # Order-free, and a mean over prompts; equal rewards give (2/k²)·C(k,2)·½.
  both = jnp.stack([r[::-1], jnp.zeros(3)])
  tie = 2.0 / 9.0 * 3 * 0.5
  assert float(metarm_difference_loss(both)) == pytest.approx((want + tie) / 2, abs=1e-6)


def test_metarm_difference_loss_errors():
  with pytest.raises(ValueError, match="rewards"):
    metarm_difference_loss(jnp.zeros((2, 1)))
  with pytest.raises(ValueError, match="rewards"):
    metarm_difference_loss(jnp.zeros(3))


def brute_auroc(scores, positives):
  pos = [s for s, p in zip(scores, positives) if p]
  neg = [s for s, p in zip(scores, positives) if not p]
  wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_auroc_against_brute_force():
  rng = np.random.default_rng(1)
  scores = rng.integers(0, 5, size=40).astype(float)  # many ties
  positives = rng.random(40) < 0.3
  assert auroc(scores, positives) == pytest.approx(brute_auroc(scores, positives), abs=1e-12)
  s, y = [0.1, 0.4, 0.35, 0.8], np.array([False, False, True, True])
  assert auroc(s, y) == pytest.approx(0.75)
  assert auroc([1.0, 2.0, 3.0, 4.0], y) == 1.0
  assert auroc([4.0, 3.0, 2.0, 1.0], y) == 0.0
  assert auroc([1.0, 1.0, 1.0, 1.0], y) == 0.5


def test_auroc_errors():
  with pytest.raises(ValueError, match="both classes"):
    auroc([1.0, 2.0], np.array([True, True]))
  with pytest.raises(ValueError, match="positives"):
    auroc([1.0, 2.0], [1, 0])
  with pytest.raises(ValueError, match="positives"):
    auroc([1.0, 2.0], np.array([True]))
  with pytest.raises(ValueError, match="scores"):
    auroc([[1.0, 2.0]], np.array([[True, False]]))
  with pytest.raises(ValueError, match="scores"):
    auroc([np.nan, 2.0], np.array([True, False]))
