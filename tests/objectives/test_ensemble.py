"""Ensemble objectives against hand-computed values and float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax.objectives import ensemble as E

# Three examples, K = 4 members. Row 0: mean 3, min 1, squared deviations 4+1+0+9 = 14.
# Row 1: all equal. Row 2: mean 0, min -1, squared deviations 4·1 = 4.
R = np.array([[1.0, 2.0, 3.0, 6.0],
              [0.0, 0.0, 0.0, 0.0],
              [-1.0, 1.0, -1.0, 1.0]], np.float32)


def close(a, b, tol=1e-6):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b, np.float64), rtol=tol, atol=tol)


def test_mean_and_worst_case_by_hand():
  close(E.mean(R), [3.0, 0.0, 0.0])
  close(E.worst_case(R), [1.0, 0.0, -1.0])


def test_uwo_population_variance_by_hand():
  # Var = [14/4, 0, 4/4]; λ = 0.5 default.
  close(E.uncertainty_weighted(R), [3.0 - 0.5 * 3.5, 0.0, -0.5])
  close(E.uncertainty_weighted(R, lam=2.0), [3.0 - 7.0, 0.0, -2.0])


def test_uwo_unbiased_variance_by_hand():
  close(E.uncertainty_weighted(R, lam=0.5, unbiased=True), [3.0 - 0.5 * 14 / 3, 0.0, -2 / 3])


def test_uwo_lambda_zero_is_mean():
  r = jax.random.normal(jax.random.key(0), (5, 7, 5)) * 3.0 + 1.0
  close(E.uncertainty_weighted(r, lam=0.0), np.mean(np.asarray(r, np.float64), -1), 1e-5)


def test_brme_scalar_heads_by_hand():
  close(E.brme(R, lam=0.5), [0.5 * 3 + 0.5 * 1, 0.0, -0.5])
  close(E.brme(R, lam=0.25), [0.25 * 3 + 0.75 * 1, 0.0, -0.75])
  close(E.brme(R, lam=0.0), E.worst_case(R))
  close(E.brme(R, lam=1.0), E.mean(R))


def test_brme_gaussian_nominal_is_lowest_std_head():
  stds = np.array([[0.5, 0.2, 0.9, 0.3],    # head 1 → nominal 2
                   [1.0, 1.0, 1.0, 1.0],    # tie → head 0, nominal 0
                   [1.0, 1.0, 0.1, 1.0]],   # head 2 → nominal -1
                  np.float32)
  close(E.brme(R, lam=0.5, stds=stds), [0.5 * 2 + 0.5 * 1, 0.0, -1.0])
  close(E.brme(R, lam=1.0, stds=stds), [2.0, 0.0, -1.0])


def test_single_member():
  close(E.single(R, member=3), [6.0, 0.0, 1.0])
  close(E.single(R, member=-1), [6.0, 0.0, 1.0])
  close(E.single(R), R[:, 0])


def test_normalization_makes_reference_zero_mean_unit_std():
  key = jax.random.key(1)
  scales = jnp.array([0.1, 1.0, 10.0])
  shifts = jnp.array([-5.0, 0.0, 3.0])
  ref = jax.random.normal(key, (40, 16, 3)) * scales + shifts  # [prompts, N, K]
  mu, sigma = E.normalization_stats(ref)
  flat = np.asarray(ref, np.float64).reshape(-1, 3)
  close(mu, flat.mean(0), 1e-5)
  close(sigma, flat.std(0), 1e-5)
  z = np.asarray(E.normalize(ref, mu, sigma), np.float64).reshape(-1, 3)
  close(z.mean(0), np.zeros(3), 1e-5)
  close(z.std(0), np.ones(3), 1e-5)
  # New (policy) samples are mapped with the reference statistics, not their own.
  shifted = E.normalize(ref + 1.0, mu, sigma)
  close(np.asarray(shifted).reshape(-1, 3).mean(0), 1.0 / flat.std(0), 1e-4)


def test_normalization_constant_member_is_only_centred():
  ref = np.stack([np.arange(6.0), np.full(6, 4.0)], -1)
  mu, sigma = E.normalization_stats(ref)
  close(sigma[1], 1.0)
  z = E.normalize(ref, mu, sigma)
  assert np.all(np.isfinite(np.asarray(z)))
  close(z[:, 1], np.zeros(6))


def test_combine_dispatches_by_name():
  stds = np.abs(R) + 0.1
  close(E.combine(R, "mean"), [3.0, 0.0, 0.0])
  close(E.combine(R, "wco"), [1.0, 0.0, -1.0])
  close(E.combine(R, "uwo", lam=0.5), [1.25, 0.0, -0.5])
  close(E.combine(R, "uwo", lam=0.5, unbiased=True), E.uncertainty_weighted(R, 0.5, True))
  close(E.combine(R, "brme", lam=0.5, stds=stds), E.brme(R, 0.5, stds))
  close(E.combine(R, "single", member=2), R[:, 2])


def test_combine_under_jit_and_upcasts_bf16():
  out = jax.jit(lambda r: E.combine(r, "uwo", lam=0.5))(jnp.asarray(R, jnp.bfloat16))
  assert out.dtype == jnp.float32
  close(out, [1.25, 0.0, -0.5])


@pytest.mark.parametrize("call, words", [
    (lambda: E.combine(R, "median"), ["median", "wco", "uwo"]),
    (lambda: E.combine(R, "wco", lam=0.5), ["wco", "lam"]),
    (lambda: E.uncertainty_weighted(R, lam=-0.1), ["lam=-0.1"]),
    (lambda: E.uncertainty_weighted(R[:, :1], unbiased=True), ["unbiased", "K=1"]),
    (lambda: E.brme(R, lam=1.5), ["lam=1.5"]),
    (lambda: E.brme(R, stds=np.ones((3, 2))), ["stds", "(3, 2)"]),
    (lambda: E.single(R, member=4), ["member=4", "K=4"]),
    (lambda: E.mean(np.float32(1.0)), ["[..., K]"]),
    (lambda: E.normalize(R, np.zeros(3), np.ones(4)), ["mu", "sigma", "(3,)"]),
])
def test_bad_arguments_are_named(call, words):
  with pytest.raises(ValueError) as err:
    call()
  for word in words:
    assert word in str(err.value)


def test_each_objective_has_its_own_documented_default_parameter():
  # UWO: Coste et al.'s best-of-n λ by default; PPO has its own constant (their PPO value).
  assert (E.UWO_LAM_BON, E.UWO_LAM_PPO, E.BRME_LAM) == (0.5, 0.1, 0.5)
  close(E.uncertainty_weighted(R), E.uncertainty_weighted(R, lam=E.UWO_LAM_BON))
  close(E.brme(R), E.brme(R, lam=E.BRME_LAM))
  # options() maps one parameter per objective to combine's kwargs; no objective reads
  # another's parameter.
  assert E.options("uwo", uwo_lam=0.3, brme_lam=0.7) == {"lam": 0.3}
  assert E.options("brme", uwo_lam=0.3, brme_lam=0.7) == {"lam": 0.7}
  assert E.options("wco", uwo_lam=0.3, brme_lam=0.7) == {}
  assert E.options("uwo") == {"lam": E.UWO_LAM_PPO}
  close(E.combine(R, "brme", **E.options("brme", uwo_lam=0.9, brme_lam=0.25)),
        E.brme(R, lam=0.25))
