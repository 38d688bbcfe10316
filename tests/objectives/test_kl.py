"""KL estimators by hand and as exact expectations; the β controllers' update by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax.objectives.kl import (
  KLController,
  adaptive_kl_controller,
  fixed_kl_controller,
  kl_per_token,
  sequence_kl,
  update_kl_controller,
)


def test_estimators_hand():
  logp = jnp.asarray([-1.0, -2.0, -0.5], jnp.float32)
  ref = jnp.asarray([-1.5, -1.0, -0.5], jnp.float32)  # Δ = [0.5, −1, 0]
  np.testing.assert_allclose(kl_per_token(logp, ref, "k1"), [0.5, -1.0, 0.0], atol=1e-7)
  np.testing.assert_allclose(kl_per_token(logp, ref, "k2"), [0.125, 0.5, 0.0], atol=1e-7)
  # k3 = (r − 1) − log r, r = exp(−Δ)
  want = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0, 0.0]
  np.testing.assert_allclose(kl_per_token(logp, ref, "k3"), want, atol=1e-6)
  with pytest.raises(ValueError, match="estimator"):
    kl_per_token(logp, ref, "k4")


def test_k3_nonnegative():
  rng = np.random.default_rng(0)
  logp = (rng.standard_normal(10_000) * np.geomspace(1e-8, 10, 10_000)).astype(np.float32)
  ref = np.zeros_like(logp)
  k3 = kl_per_token(logp, ref, "k3")
  assert np.all(np.asarray(k3) >= 0.0)
  k2 = kl_per_token(logp, ref, "k2")
  assert np.all(np.asarray(k2) >= 0.0)


def test_k1_and_k3_expectations_are_the_exact_kl():
  rng = np.random.default_rng(1)
  p = rng.dirichlet(np.ones(7))
  q = rng.dirichlet(np.ones(7))
  kl = float(np.sum(p * np.log(p / q)))
  lp, lq = np.log(p).astype(np.float32), np.log(q).astype(np.float32)
  for est in ("k1", "k3"):  # tokens drawn from p: E_p[k] = KL(p ‖ q)
    assert float(jnp.sum(p * kl_per_token(lp, lq, est))) == pytest.approx(kl, rel=1e-5)


def test_sequence_kl():
  logp = jnp.asarray([[-1.0, -2.0, 9.0], [0.0, 0.0, 0.0]], jnp.float32)
  ref = jnp.asarray([[-1.5, -1.0, 0.0], [-1.0, 0.0, 0.0]], jnp.float32)
  m = jnp.array([[True, True, False], [True, True, True]])
  np.testing.assert_allclose(sequence_kl(logp, ref, m), [-0.5, 1.0], atol=1e-7)
  np.testing.assert_allclose(sequence_kl(logp, ref, m, "k2"), [0.625, 0.5], atol=1e-7)


@pytest.mark.parametrize("kl,factor", [(9.0, 1 + 0.2 * 256 / 10_000),   # error clipped at +0.2
                                       (6.6, 1 + 0.1 * 256 / 10_000),   # KL/target − 1 = 0.1
                                       (6.0, 1.0),
                                       (0.0, 1 - 0.2 * 256 / 10_000)])  # clipped at −0.2
def test_adaptive_controller_hand(kl, factor):
  state = adaptive_kl_controller()
  assert float(state.beta) == pytest.approx(0.1) and float(state.target) == 6.0
  assert float(state.horizon) == 10_000
  new = jax.jit(update_kl_controller)(state, kl, 256)
  assert float(new.beta) == pytest.approx(0.1 * factor, rel=1e-6)
  assert isinstance(new, KLController) and new.beta.dtype == jnp.float32


def test_adaptive_controller_compounds_and_fixed_stays():
  state = adaptive_kl_controller(init_beta=0.2, target=1.0, horizon=100)
  for _ in range(3):
    state = update_kl_controller(state, jnp.asarray(2.0), 10)
  assert float(state.beta) == pytest.approx(0.2 * 1.02 ** 3, rel=1e-6)
  fixed = fixed_kl_controller(0.05)
  for kl in (0.0, 6.0, 100.0):
    assert float(update_kl_controller(fixed, kl, 512).beta) == pytest.approx(0.05)
  # the state is a pytree of arrays, so it round-trips through tree utilities
  leaves, tree = jax.tree.flatten(state)
  assert all(isinstance(x, jax.Array) for x in leaves)
  assert jax.tree.unflatten(tree, leaves) == state
