"""Reward transforms against hand-computed values and numpy/scipy float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rmjax.objectives import constrained
from rmjax.objectives import transforms as T

# log σ(d) = −log(1 + e^{−d}) by hand: d = 0 → −log 2; d = 1 → −log(1 + 1/e);
# d = −1 → −log(1 + e); d = ±2 → −log(1 + e^{∓2}); d = −5 → −log(1 + e^5).
LS0, LS1, LSM1 = -0.6931471806, -0.3132616875, -1.3132616875
LS2, LSM2, LSM5 = -0.1269280110, -2.1269280110, -5.0067153485


def close(a, b, tol=1e-6):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b, np.float64), rtol=tol, atol=tol)


def test_reference_quantile_empirical_by_hand_and_numpy():
  # Positions 0..4; 0.85·4 = 3.4 → 4 + 0.4·(5 − 4) = 4.4. Median of [3, 1, 2] is 2.
  close(T.reference_quantile(np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])), [4.4], 1e-6)
  close(T.reference_quantile(np.array([[3.0, 1.0, 2.0]]), q=0.5), [2.0])
  ref = np.asarray(jax.random.normal(jax.random.key(0), (6, 33)) * 2.0 + 1.0)
  for q in (0.1, 0.5, 0.85, 0.99):
    close(T.reference_quantile(ref, q=q), np.quantile(ref.astype(np.float64), q, axis=-1), 1e-5)


def test_reference_quantile_gaussian_by_hand_and_scipy():
  # Mean 3, population std √2, z_0.85 = 1.0364334 → 3 + 1.0364334·1.4142136 = 4.4657382.
  close(T.reference_quantile(np.array([[1.0, 2.0, 3.0, 4.0, 5.0]]), method="gaussian"),
        [4.4657382], 1e-6)
  ref = np.asarray(jax.random.normal(jax.random.key(1), (4, 50, 3)) * 0.5 - 2.0)
  ref64 = ref.astype(np.float64)
  for q in (0.05, 0.85, 0.975):
    want = ref64.mean(-1) + stats.norm.ppf(q) * ref64.std(-1)
    close(T.reference_quantile(ref, q=q, method="gaussian"), want, 1e-5)
  close(jax.scipy.special.ndtri(0.85), 1.0364, 1e-4)


def test_reference_quantile_one_sample_and_traced_q():
  close(T.reference_quantile(np.array([[2.5], [-1.0]])), [2.5, -1.0])
  close(T.reference_quantile(np.array([[2.5], [-1.0]]), method="gaussian"), [2.5, -1.0])
  ref = np.arange(10.0).reshape(2, 5)
  out = jax.jit(T.reference_quantile, static_argnames="method")(ref, 0.85)
  close(out, np.quantile(ref, 0.85, axis=-1), 1e-6)


def test_lsc_by_hand():
  close(T.lsc([1.0, 3.0, -1.0], [1.0, 2.0, 1.0]), [LS0, LS1, LSM2])


def test_lsc_broadcasts_reference_over_samples():
  # Best-of-n layout: [P, N] scores, one reference per prompt.
  u = T.lsc([[0.0, 1.0], [2.0, 3.0]], [1.0, 3.0])
  close(u, [[LSM1, LS0], [LSM1, LS0]])
  assert T.lsc(np.zeros((2, 3, 4)), np.zeros(2)).shape == (2, 3, 4)


def test_lsc_is_monotone_nonpositive_stable_and_matches_float64():
  r = np.linspace(-300.0, 300.0, 20001, dtype=np.float32)
  u = np.asarray(T.lsc(r, np.full_like(r, 0.5)))
  assert np.all(np.isfinite(u))
  assert np.all(u <= 0.0)
  assert np.all(np.diff(u) >= 0.0)  # float32 saturates at 0 far right, so ≥ not >
  d = r.astype(np.float64) - 0.5
  close(u, -np.logaddexp(0.0, -d), 1e-5)
  close(u[0], -300.5, 1e-5)     # ≈ d far left
  mid = np.abs(d) < 10
  assert np.all(np.diff(u[mid]) > 0.0)  # strictly increasing where float32 resolves it


def test_and_combine_by_hand():
  rewards = [[1.0, 0.0], [3.0, -1.0]]
  refs = [[0.0, 0.0], [1.0, 1.0]]
  close(T.and_combine(rewards, refs), [LS1 + LS0, LS2 + LSM2])


def test_and_combine_is_sum_of_lsc_per_model_and_broadcasts_over_samples():
  key_r, key_ref = jax.random.split(jax.random.key(2))
  rewards = jax.random.normal(key_r, (3, 5, 4))  # [P, N, J]
  refs = jax.random.normal(key_ref, (3, 4))       # [P, J]
  want = sum(np.asarray(T.lsc(rewards[..., j], refs[:, j])) for j in range(4))
  close(T.and_combine(rewards, refs), want, 1e-5)
  full = jnp.broadcast_to(refs[:, None, :], rewards.shape)
  close(T.and_combine(rewards, full), want, 1e-5)


def test_weighted_sum_by_hand():
  close(T.weighted_sum([[1.0, 2.0], [3.0, 4.0]], [0.5, -1.0]), [-1.5, -2.5])


def test_and_combine_vetoes_what_weighted_sum_trades_off():
  # A is great on model 1 and fails model 2; B is decent on both. References 0.
  rewards = np.array([[10.0, -5.0], [2.0, 2.0]])
  close(T.weighted_sum(rewards, [0.5, 0.5]), [2.5, 2.0])  # the sum prefers A
  u = T.and_combine(rewards, np.zeros((2, 2)))
  close(u, [-np.log1p(np.exp(-10.0)) + LSM5, 2 * LS2], 1e-6)  # [-5.0067607, -0.2538560]
  assert u[1] > u[0]  # the AND prefers B


def test_ema_update_by_hand():
  s = T.ema_init()
  assert s.shape == () and s.dtype == jnp.float32
  s = T.ema_update(s, [1.0, 2.0, 3.0])         # 0.1·2 + 0.9·0 = 0.2
  close(s, 0.2)
  s = T.ema_update(s, [[4.0]])                 # 0.1·4 + 0.9·0.2 = 0.58
  close(s, 0.58)
  close(T.ema_update(T.ema_init(1.5), [3.0, 5.0], alpha=1.0), 4.0)
  close(T.ema_update(T.ema_init(1.5), [3.0, 5.0], alpha=0.5), 2.75)


def test_ema_update_under_scan_matches_python_loop():
  batches = np.asarray(jax.random.normal(jax.random.key(3), (7, 16)))
  final, _ = jax.lax.scan(lambda s, r: (T.ema_update(s, r), None), T.ema_init(), batches)
  want = 0.0
  for r in batches.astype(np.float64):
    want = 0.1 * r.mean() + 0.9 * want
  close(final, want, 1e-6)


def test_calibrated_reward_by_hand():
  r = [3.0, 3.0, -1.0, 1.0]
  c = [1.0, 0.0, 1.0, 0.5]
  # r − r̄ = [2, 2, −2, 0]; ĉ − 0.5 = [0.5, −0.5, 0.5, 0]; w = 2.
  close(T.calibrated_reward(r, c, 1.0), [5.0, 1.0, -3.0, 1.0])
  close(T.calibrated_reward(r, c, 1.0, w=1.0), [4.0, 2.0, -2.0, 1.0])
  close(T.calibrated_reward(r, c, 1.0, w=0.0), r)
  close(T.calibrated_reward(r, [0.5] * 4, T.ema_init(7.0)), r)


def test_transforms_under_jit_and_upcast_bf16():
  r = jnp.asarray([[0.0, 1.0], [2.0, 3.0]], jnp.bfloat16)
  out = jax.jit(T.lsc)(r, jnp.asarray([1.0, 3.0], jnp.bfloat16))
  assert out.dtype == jnp.float32
  close(out, [[LSM1, LS0], [LSM1, LS0]])
  # Traced confidence skips the range check; concrete values were checked by the caller.
  out = jax.jit(T.calibrated_reward)(jnp.asarray([3.0, 3.0]), jnp.asarray([1.0, 0.0]), 1.0)
  close(out, [5.0, 1.0])
  out = jax.jit(T.and_combine)(jnp.asarray([[1.0, 0.0]], jnp.bfloat16), jnp.zeros((1, 2)))
  assert out.dtype == jnp.float32
  close(out, [LS1 + LS0])


@pytest.mark.parametrize("call, words", [
    (lambda: T.reference_quantile(np.ones((2, 3)), q=0.0), ["q=0.0", "(0, 1)"]),
    (lambda: T.reference_quantile(np.ones((2, 3)), q=1.0), ["q=1.0", "(0, 1)"]),
    (lambda: T.reference_quantile(np.ones((2, 3)), q=85), ["q=85"]),
    (lambda: T.reference_quantile(np.ones((2, 3)), q=[0.5, 0.9]), ["q=[0.5, 0.9]"]),
    (lambda: T.reference_quantile(np.ones((2, 3)), method="median"),
     ["median", "empirical", "gaussian"]),
    (lambda: T.reference_quantile(np.float32(1.0)), ["[P, N]", "()"]),
    (lambda: T.reference_quantile(np.ones((2, 0))), ["[P, N]", "(2, 0)"]),
    (lambda: T.lsc(np.ones((3, 4)), np.ones(4)), ["r_ref", "(3, 4)", "(4,)"]),
    (lambda: T.lsc(np.ones(3), np.ones((3, 1))), ["r_ref", "(3, 1)"]),
    (lambda: T.and_combine(np.ones(3), np.ones(3)), ["[B, J]", "(3,)"]),
    (lambda: T.and_combine(np.ones((3, 2)), np.ones((2, 3))), ["r_refs", "(3, 2)", "(2, 3)"]),
    (lambda: T.and_combine(np.ones((3, 5, 2)), np.ones((3, 5))), ["r_refs", "(3, 5)"]),
    (lambda: T.weighted_sum(np.ones((3, 2)), np.ones(3)), ["weights", "(3, 2)", "(3,)"]),
    (lambda: T.ema_init(np.ones(2)), ["scalar", "(2,)"]),
    (lambda: T.ema_update(np.zeros(2), np.ones(3)), ["state", "(2,)"]),
    (lambda: T.ema_update(0.0, np.ones(0)), ["empty"]),
    (lambda: T.ema_update(0.0, np.ones(3), alpha=0.0), ["alpha=0.0"]),
    (lambda: T.calibrated_reward(np.ones(3), np.ones(2), 0.0), ["confidence", "(3,)", "(2,)"]),
    (lambda: T.calibrated_reward(np.ones(2), [0.5, 7.0], 0.0), ["[0, 1]", "7.0"]),
    (lambda: T.calibrated_reward(np.ones(2), [-0.1, 0.5], 0.0), ["[0, 1]", "-0.1"]),
    (lambda: T.calibrated_reward(np.ones(2), [np.nan, 0.5], 0.0), ["[0, 1]", "nan"]),
    (lambda: T.calibrated_reward(np.ones(2), [0.5, 0.5], np.ones(3)), ["mean", "(3,)"]),
])
def test_bad_arguments_are_named(call, words):
  with pytest.raises(ValueError) as err:
    call()
  for word in words:
    assert word in str(err.value)


def test_constrained_rlhf_multiplier_step_by_hand():
  nu = np.array([0.0, 2.0])
  mu = 1 / (1 + np.exp(-nu))
  np.testing.assert_allclose(constrained.multipliers(nu), mu, rtol=1e-6)
  out = constrained.multiplier_step(nu, returns=np.array([1.5, -1.0]),
                                    thresholds=np.array([1.0, 0.0]), lr=0.1)
  # above its threshold component 0 loses weight; below, component 1 gains it
  np.testing.assert_allclose(out, nu - 0.1 * mu * (1 - mu) * np.array([0.5, -1.0]), rtol=1e-6)
  assert out[0] < nu[0] and out[1] > nu[1]
