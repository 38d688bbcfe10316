"""The Gaussian preference NLL against hand values, math.erf's normal CDF and a Monte-Carlo
estimate of P(r_chosen > r_rejected) under the predicted Gaussians."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax.objectives import gaussian


def f32(*xs):
  return jnp.asarray(xs, jnp.float32)


def log_std_of(s):
  """The log-std output whose predicted std is exactly ``s`` (s > the floor)."""
  return math.log(s - gaussian.STD_FLOOR)


def phi(z):  # the standard normal CDF from math.erf (independent of jax.scipy)
  return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def test_std_is_the_floor_plus_exp_and_never_below_the_floor():
  np.testing.assert_allclose(gaussian.std(f32(0.0, math.log(2.0))),
                             [1.0 + gaussian.STD_FLOOR, 2.0 + gaussian.STD_FLOOR], rtol=1e-6)
  assert float(gaussian.std(f32(-1e4))[0]) == pytest.approx(gaussian.STD_FLOOR)


def test_nll_is_minus_log_phi_of_the_standardised_difference_by_hand():
  # μ_c = 1, μ_r = 0, s_c = s_r = 1: z = 1/√2 = 0.70711, Φ(z) = 0.76025, −log Φ = 0.27411.
  ls = log_std_of(1.0)
  nll = gaussian.preference_nll(f32(1.0), f32(0.0), f32(ls), f32(ls))
  np.testing.assert_allclose(nll, [0.274110], atol=2e-6)
  # μ_c = 0, μ_r = 1.5, s_c = 0.5, s_r = 2: z = −1.5/√4.25 = −0.72761.
  nll = gaussian.preference_nll(f32(0.0), f32(1.5), f32(log_std_of(0.5)), f32(log_std_of(2.0)))
  np.testing.assert_allclose(nll, [-math.log(phi(-1.5 / math.sqrt(4.25)))], rtol=1e-5)


def test_nll_is_minus_log_of_the_monte_carlo_preference_probability():
  mu_c, mu_r, s_c, s_r = 0.3, -0.2, 0.7, 1.3
  k1, k2 = jax.random.split(jax.random.key(0))
  n = 400_000
  r_c = mu_c + s_c * jax.random.normal(k1, (n,))
  r_r = mu_r + s_r * jax.random.normal(k2, (n,))
  p = float(jnp.mean(r_c > r_r))  # standard error ≈ 0.0008
  nll = gaussian.preference_nll(f32(mu_c), f32(mu_r), f32(log_std_of(s_c)), f32(log_std_of(s_r)))
  assert float(nll[0]) == pytest.approx(-math.log(p), abs=0.004)


def test_margin_and_label_smoothing_by_hand():
  ls = f32(log_std_of(1.0), log_std_of(1.0))
  # margin 1 on Δ = 1.5: z = 0.5/√2; smoothing 0.2 on the second pair only.
  nll = gaussian.preference_nll(f32(1.5, 1.5), f32(0.0, 0.0), ls, ls, margin=1.0,
                                label_smoothing=0.2, smoothing_mask=jnp.array([False, True]))
  z = 0.5 / math.sqrt(2.0)
  np.testing.assert_allclose(nll, [-math.log(phi(z)),
                                   -(0.8 * math.log(phi(z)) + 0.2 * math.log(phi(-z)))],
                             rtol=1e-5)


def test_a_larger_std_lowers_a_wrongly_ordered_pairs_loss_and_raises_a_right_ones():
  grad = jax.grad(lambda ls, d: gaussian.preference_nll(f32(d), f32(0.0), ls, ls)[0])
  assert float(grad(f32(0.0), 1.0)[0]) > 0  # ordered right: certainty pays
  assert float(grad(f32(0.0), -1.0)[0]) < 0  # ordered wrong: uncertainty pays


def test_loss_weights_pairs_and_adds_the_penalties_on_the_means():
  mu_c, mu_r = f32(1.0, -0.5), f32(0.0, 0.5)
  ls = f32(log_std_of(1.0), log_std_of(1.0))
  w = f32(3.0, 1.0)
  loss, aux = gaussian.gaussian_preference_loss(mu_c, mu_r, ls, ls, weight=w, center_coef=0.5,
                                                score_reg_coef=0.1)
  per_pair = [-math.log(phi(1.0 / math.sqrt(2))), -math.log(phi(-1.0 / math.sqrt(2)))]
  nll = (3 * per_pair[0] + per_pair[1]) / 4
  center = 0.5 * (3 * 1.0 + 0.0) / 4
  score_reg = 0.1 * (3 * 0.5 + 0.5 * 0.5) / 4
  np.testing.assert_allclose([aux["nll"], aux["center"], aux["score_reg"], loss],
                             [nll, center, score_reg, nll + center + score_reg], rtol=1e-5)


def test_shapes_that_differ_are_refused():
  with pytest.raises(ValueError, match="must all be \\[batch\\]"):
    gaussian.preference_nll(f32(1.0, 2.0), f32(0.0, 0.0), f32(0.0), f32(0.0, 0.0))
