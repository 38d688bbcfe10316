"""Bradley–Terry loss and metrics against values worked out by hand and against scipy's
independent log-sigmoid (``scipy.special.log_expit``)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit, log_expit

from rmjax.objectives.bt import (
  bradley_terry_loss,
  expected_calibration_error,
  gold_agreement,
  mean_margin,
  pairwise_accuracy,
  pearson_correlation,
)


def nls(x):  # −log σ(x), from scipy (float64)
  return float(-log_expit(x))


def f32(*xs):
  return jnp.asarray(xs, jnp.float32)


def test_per_pair_loss_is_scipy_negative_log_sigmoid_over_a_grid():
  """One pair at a time, Δ over a wide grid (large |Δ| included, where a naive
  −log(1/(1 + e^−Δ)) overflows): the loss is −log σ(Δ), and with smoothing α it is
  −[(1 − α) log σ(Δ) + α log σ(−Δ)]."""
  delta = np.array([-100.0, -40.0, -7.5, -1.0, -0.1, 0.0, 0.3, 1.0, 4.0, 25.0, 100.0])
  for d in delta:
    plain, _ = bradley_terry_loss(f32(d), f32(0.0))
    assert float(plain) == pytest.approx(-log_expit(d), rel=1e-6, abs=1e-6), d
    for alpha in (0.1, 0.5):
      smooth, _ = bradley_terry_loss(f32(d), f32(0.0), label_smoothing=alpha)
      want = -((1 - alpha) * log_expit(d) + alpha * log_expit(-d))
      assert float(smooth) == pytest.approx(want, rel=1e-6, abs=1e-6), (d, alpha)
  # Batched: the mean of the per-pair values, chosen and rejected both non-zero.
  rng = np.random.default_rng(0)
  rc, rr = rng.normal(size=16) * 3, rng.normal(size=16) * 3
  loss, _ = bradley_terry_loss(jnp.asarray(rc, jnp.float32), jnp.asarray(rr, jnp.float32))
  assert float(loss) == pytest.approx(np.mean(-log_expit(rc.astype(np.float32)
                                                         - rr.astype(np.float32))), rel=1e-5)


def test_gradient_is_minus_sigmoid_of_minus_delta():
  """d/dr_c of the mean BT loss is −σ(−Δ_i)/B and d/dr_r its negative (scipy's expit)."""
  rc, rr = f32(2.0, -1.0, 0.0, 30.0), f32(0.5, 1.0, 0.0, -30.0)
  g_c, g_r = jax.grad(lambda a, b: bradley_terry_loss(a, b)[0], argnums=(0, 1))(rc, rr)
  delta = np.asarray(rc, np.float64) - np.asarray(rr, np.float64)
  np.testing.assert_allclose(np.asarray(g_c), -expit(-delta) / 4, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(np.asarray(g_r), expit(-delta) / 4, rtol=1e-5, atol=1e-8)


def test_plain_bt():
  loss, aux = bradley_terry_loss(f32(1.0, 0.0), f32(0.0, 0.0))
  want = (0.3132616875 + 0.6931471806) / 2  # Δ = [1, 0]
  assert float(loss) == pytest.approx(want, abs=1e-6)
  assert float(aux["bt"]) == pytest.approx(want, abs=1e-6)
  assert float(aux["center"]) == 0.0 and float(aux["score_reg"]) == 0.0
  assert loss.dtype == jnp.float32


def test_label_smoothing():
  rc, rr = f32(1.0, -0.5, 2.0), f32(0.0, 0.3, 2.5)
  plain, _ = bradley_terry_loss(rc, rr)
  zero, _ = bradley_terry_loss(rc, rr, label_smoothing=0.0)
  assert float(zero) == float(plain)
  smooth, _ = bradley_terry_loss(f32(1.0), f32(0.0), label_smoothing=0.1)
  # −[0.9 log σ(1) + 0.1 log(1 − σ(1))] = 0.9·0.3132616875 + 0.1·1.3132616875
  assert float(smooth) == pytest.approx(0.4132616875, abs=1e-6)
  half, _ = bradley_terry_loss(f32(3.0), f32(0.0), label_smoothing=0.5)
  assert float(half) == pytest.approx(0.5 * nls(3) + 0.5 * nls(-3), abs=1e-6)


def test_smoothing_mask():
  loss, _ = bradley_terry_loss(f32(1.0, 1.0), f32(0.0, 0.0), label_smoothing=0.2,
                               smoothing_mask=jnp.array([True, False]))
  pair0 = 0.8 * 0.3132616875 + 0.2 * 1.3132616875  # 0.5132616875
  pair1 = 0.3132616875
  assert float(loss) == pytest.approx((pair0 + pair1) / 2, abs=1e-6)


def test_margin_shifts_delta():
  shifted, _ = bradley_terry_loss(f32(2.0, 0.5), f32(0.0, 0.5), margin=f32(1.0, 0.0))
  assert float(shifted) == pytest.approx((nls(1.0) + nls(0.0)) / 2, abs=1e-6)
  scalar, _ = bradley_terry_loss(f32(2.0), f32(0.0), margin=3.0)  # Δ − m = −1
  assert float(scalar) == pytest.approx(1.3132616875, abs=1e-6)


def test_weights():
  loss, _ = bradley_terry_loss(f32(1.0, 0.0), f32(0.0, 0.0), weight=f32(3.0, 1.0))
  assert float(loss) == pytest.approx((3 * 0.3132616875 + 0.6931471806) / 4, abs=1e-6)
  zero, aux = bradley_terry_loss(f32(1.0, 0.0), f32(0.0, 0.0), weight=f32(0.0, 0.0),
                                 center_coef=1.0, score_reg_coef=1.0)
  assert float(zero) == 0.0 and float(aux["center"]) == 0.0
  g = jax.grad(lambda r: bradley_terry_loss(r, f32(0.0, 0.0), weight=f32(0.0, 0.0))[0])(
      f32(1.0, 0.0))
  assert np.all(np.asarray(g) == 0.0)


def test_penalties():
  rc, rr = f32(1.0, 2.0), f32(0.0, -1.0)  # Δ = [1, 3]; r_c + r_r = [1, 1]
  loss, aux = bradley_terry_loss(rc, rr, center_coef=0.01, score_reg_coef=1e-3)
  bt = (0.3132616875 + 0.0485873516) / 2  # −log σ(3) = 0.0485873516
  center = 0.01 * (1.0 ** 2 + 1.0 ** 2) / 2  # 0.01
  score_reg = 1e-3 * (0.5 * (1 + 0) + 0.5 * (4 + 1)) / 2  # 1e-3 · 1.5
  assert float(aux["bt"]) == pytest.approx(bt, abs=1e-6)
  assert float(aux["center"]) == pytest.approx(center, abs=1e-8)
  assert float(aux["score_reg"]) == pytest.approx(score_reg, abs=1e-8)
  assert float(loss) == pytest.approx(bt + center + score_reg, abs=1e-6)


def test_gradients_finite_for_large_delta():
  def f(rc):
    return bradley_terry_loss(rc, f32(0.0, 0.0), label_smoothing=0.1,
                              center_coef=0.01, score_reg_coef=1e-3)[0]
  rc = f32(100.0, -100.0)
  loss, g = jax.value_and_grad(f)(rc)
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g)))
  # BT part ≈ (0.1·100 + 0.9·100)/2 = 50; penalties 0.01·1e4 + 1e-3·5e3 = 105.
  assert float(loss) == pytest.approx(155.0, rel=1e-5)
  plain_g = jax.grad(lambda r: bradley_terry_loss(r, f32(0.0, 0.0))[0])(rc)
  # d/dΔ −log σ(Δ) = −σ(−Δ): ≈ 0 at Δ = 100, −1 at Δ = −100; mean over 2 pairs.
  np.testing.assert_allclose(np.asarray(plain_g), [0.0, -0.5], atol=1e-6)


def test_shape_mismatch_raises():
  with pytest.raises(ValueError, match="batch"):
    bradley_terry_loss(f32(1.0, 2.0), f32(1.0))


def test_accuracy_with_ties_and_mean_margin():
  rc, rr = f32(1.0, 0.0, 2.0, -1.0, 5.0), f32(0.0, 0.0, 1.0, 0.0, 4.0)  # Δ = [1,0,1,−1,1]
  assert float(pairwise_accuracy(rc, rr)) == pytest.approx(3.5 / 5, abs=1e-7)
  assert float(mean_margin(rc, rr)) == pytest.approx(2.0 / 5, abs=1e-7)


def test_ece_two_bins_by_hand():
  delta = f32(2.0, -1.0, 0.5, -3.0)
  # Confidences max(σ, 1−σ): 0.8808 (bin [.75,1]), 0.7311 ([.5,.75)), 0.6225 ([.5,.75)),
  # 0.9526 ([.75,1]). All labels 1 → correct = [1, 0, 1, 0].
  low_conf = (0.7310585786 + 0.6224593312) / 2  # 0.6767589549, acc 0.5
  high_conf = (0.8807970780 + 0.9525741268) / 2  # 0.9166856024, acc 0.5
  want = 0.5 * abs(0.5 - low_conf) + 0.5 * abs(0.5 - high_conf)  # 0.2967222787
  assert float(expected_calibration_error(delta, num_bins=2)) == pytest.approx(want, abs=1e-6)
  # Labels [1, 0, 1, 0]: every pick is right → acc 1 in both bins.
  labelled = expected_calibration_error(delta, labels=f32(1, 0, 1, 0), num_bins=2)
  want = 0.5 * (1 - low_conf) + 0.5 * (1 - high_conf)  # 0.2032777213
  assert float(labelled) == pytest.approx(want, abs=1e-6)
  # A tie has confidence ½ and counts ½ correct: perfectly calibrated.
  assert float(expected_calibration_error(f32(0.0, 0.0))) == 0.0


def test_pearson():
  x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0]
  mx, my = sum(x) / 4, sum(y) / 4
  sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))  # 11.0
  sxx = sum((a - mx) ** 2 for a in x)  # 5.0
  syy = sum((b - my) ** 2 for b in y)  # 26.0
  want = sxy / math.sqrt(sxx * syy)  # 0.9647638212
  assert float(pearson_correlation(f32(*x), f32(*y))) == pytest.approx(want, abs=1e-6)
  assert float(pearson_correlation(f32(*x), -f32(*x))) == pytest.approx(-1.0, abs=1e-6)
  assert float(pearson_correlation(f32(0.1, 0.1, 0.1), f32(1.0, 2.0, 3.0))) == 0.0
  assert float(pearson_correlation(f32(1.0, 2.0), f32(5.0, 5.0))) == 0.0
  rng = np.random.default_rng(1)  # against numpy's own estimate on correlated data
  a = rng.normal(size=64)
  b = 0.6 * a + rng.normal(size=64)
  assert float(pearson_correlation(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
               ) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-5)


def test_gold_agreement():
  # model signs [+, −, 0, +]; gold signs [+, +, 0, −] → agree [T, F, T, F]
  got = gold_agreement(f32(1.0, 0.0, 2.0, 3.0), f32(0.0, 1.0, 2.0, 1.0),
                       f32(5.0, 1.0, 0.0, 0.0), f32(4.0, 0.0, 0.0, 1.0))
  assert float(got) == pytest.approx(0.5, abs=1e-7)


def test_jit_and_bf16_inputs():
  rc = jnp.asarray([1.0, 0.0], jnp.bfloat16)
  rr = jnp.zeros(2, jnp.bfloat16)
  loss, _ = jax.jit(bradley_terry_loss)(rc, rr, None, None, 0.1, jnp.array([True, False]))
  assert loss.dtype == jnp.float32
  want = ((0.9 * nls(1) + 0.1 * nls(-1)) + math.log(2)) / 2
  assert float(loss) == pytest.approx(want, abs=1e-6)
  ece = jax.jit(expected_calibration_error, static_argnames="num_bins")
  assert float(ece(f32(1.0, -2.0), num_bins=4)) == pytest.approx(
      float(expected_calibration_error(f32(1.0, -2.0), num_bins=4)), abs=1e-7)
  assert float(ece(f32(1.0, -2.0), num_bins=4)) > 0
  # bf16 [1, 0] against [0.5, 0]: Δ = [0.5, 0], accuracy (1 + ½)/2, margin 0.25, r = 1.
  for fn, want in ((pairwise_accuracy, 0.75), (mean_margin, 0.25), (pearson_correlation, 1.0)):
    assert float(jax.jit(fn)(rc, f32(0.5, 0.0))) == pytest.approx(want, abs=1e-3), fn
  assert float(jax.jit(gold_agreement)(rc, rr, rc, rr)) == 1.0
