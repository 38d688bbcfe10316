"""PPO-max math against hand-computed values and plain numpy loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax.objectives.ppo import (
  entropy_from_logits,
  gae,
  masked_mean,
  per_token_rewards,
  policy_loss,
  value_loss,
  whiten,
)


def f32(x):
  return jnp.asarray(x, jnp.float32)


def ragged_mask(rng, b, t):
  """Right-padded bool [b, t] with lengths 0..t, every length present when b > t."""
  lengths = np.concatenate([np.arange(t + 1), rng.integers(0, t + 1, max(b - t - 1, 0))])[:b]
  return np.arange(t)[None, :] < lengths[:, None]


def gae_loop(rewards, values, mask, gamma, lam):
  """GAE written out as A_t = Σ_l (γλ)^l δ_{t+l} over each row's valid prefix."""
  adv, ret = np.zeros_like(rewards), np.zeros_like(rewards)
  for b in range(rewards.shape[0]):
    n = int(mask[b].sum())
    v = list(values[b, :n]) + [0.0]  # bootstrap 0 after the last valid token
    delta = [rewards[b, t] + gamma * v[t + 1] - v[t] for t in range(n)]
    for t in range(n):
      adv[b, t] = sum((gamma * lam) ** j * delta[t + j] for j in range(n - t))
      ret[b, t] = adv[b, t] + values[b, t]
  return adv, ret


def test_masked_mean():
  x = f32([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
  m = jnp.array([[True, True, False], [True, False, False]])
  assert float(masked_mean(x, m)) == pytest.approx(2.0)
  assert float(masked_mean(x, jnp.zeros_like(m))) == 0.0


def test_gae_hand_three_tokens():
  r = f32([[0.0, 0.0, 1.0, 7.0]])
  v = f32([[0.5, 0.4, 0.3, 9.0]])  # the padded fourth token must not matter
  m = jnp.array([[True, True, True, False]])
  adv, ret = gae(r, v, m, gamma=1.0, lam=0.95)
  # δ = [0.4 − 0.5, 0.3 − 0.4, 1 − 0.3] = [−0.1, −0.1, 0.7]
  # A2 = 0.7, A1 = −0.1 + 0.95·0.7 = 0.565, A0 = −0.1 + 0.95·0.565 = 0.43675
  np.testing.assert_allclose(adv, [[0.43675, 0.565, 0.7, 0.0]], atol=1e-6)
  np.testing.assert_allclose(ret, [[0.93675, 0.965, 1.0, 0.0]], atol=1e-6)
  adv, _ = gae(r, v, m, gamma=0.9, lam=0.95)
  # δ = [0.9·0.4 − 0.5, 0.9·0.3 − 0.4, 0.7] = [−0.14, −0.13, 0.7], γλ = 0.855
  # A1 = −0.13 + 0.855·0.7 = 0.4685, A0 = −0.14 + 0.855·0.4685 = 0.2605675
  np.testing.assert_allclose(adv, [[0.2605675, 0.4685, 0.7, 0.0]], atol=1e-6)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0), (0.9, 0.0)])
def test_gae_matches_loop_on_ragged_batches(gamma, lam):
  rng = np.random.default_rng(0)
  b, t = 9, 6
  r = rng.standard_normal((b, t)).astype(np.float32)
  v = rng.standard_normal((b, t)).astype(np.float32)
  m = ragged_mask(rng, b, t)
  adv, ret = jax.jit(gae)(r, v, m, gamma, lam)
  want_adv, want_ret = gae_loop(r, v, m, gamma, lam)
  np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)
  assert adv.dtype == jnp.float32 and adv.shape == (b, t)


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
  rng = np.random.default_rng(1)
  r = rng.standard_normal((3, 5)).astype(np.float32)
  v = rng.standard_normal((3, 5)).astype(np.float32)
  m = np.ones((3, 5), bool)
  adv, ret = gae(r, v, m, 1.0, 1.0)
  to_go = np.cumsum(r[:, ::-1], axis=1)[:, ::-1]
  np.testing.assert_allclose(ret, to_go, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(adv, to_go - v, rtol=1e-5, atol=1e-5)


def test_whiten_hand():
  x = f32([[1.0, 2.0, 3.0, 99.0]])
  m = jnp.array([[True, True, True, False]])
  s = 1.0 / math.sqrt(2.0 / 3.0 + 1e-6)  # μ = 2, population σ² = 2/3
  np.testing.assert_allclose(whiten(x, m), [[-s, 0.0, s, 0.0]], atol=1e-6)
  np.testing.assert_allclose(whiten(x, m, clip=0.5), [[-0.5, 0.0, 0.5, 0.0]], atol=1e-6)
  np.testing.assert_allclose(whiten(x, m, shift_mean=False), [[2 - s, 2.0, 2 + s, 0.0]],
                             atol=1e-6)


def test_whiten_matches_numpy_over_valid_tokens():
  rng = np.random.default_rng(2)
  x = (3.0 + 2.0 * rng.standard_normal((6, 7))).astype(np.float32)
  m = ragged_mask(rng, 6, 7)
  out = np.asarray(jax.jit(whiten)(x, m))
  valid = x[m]
  want = (valid - valid.mean()) / np.sqrt(valid.var() + 1e-6)
  np.testing.assert_allclose(out[m], want, rtol=1e-5, atol=1e-5)
  assert np.all(out[~m] == 0.0)
  assert out[m].mean() == pytest.approx(0.0, abs=1e-5)
  assert out[m].std() == pytest.approx(1.0, abs=1e-4)


def test_policy_loss_hand():
  ratios = [1.5, 0.5, 1.0, 1.1, 50.0]
  logp = f32([[math.log(q) for q in ratios]])
  old = jnp.zeros_like(logp)
  adv = f32([[1.0, -1.0, 2.0, -3.0, 10.0]])
  m = jnp.array([[True, True, True, True, False]])
  loss, met = policy_loss(logp, old, adv, m, clip_eps=0.2)
  # per token max(−Aρ, −A clip(ρ)): [−1.2 (clipped), 0.8 (clipped), −2, 3.3]
  assert float(loss) == pytest.approx((-1.2 + 0.8 - 2.0 + 3.3) / 4, abs=1e-6)
  assert float(met["clip_fraction"]) == pytest.approx(0.5)
  assert float(met["ratio_mean"]) == pytest.approx((1.5 + 0.5 + 1.0 + 1.1) / 4, abs=1e-6)
  k3 = sum(q - 1 - math.log(q) for q in ratios[:4]) / 4
  assert float(met["approx_kl"]) == pytest.approx(k3, abs=1e-6)
  # clipped tokens carry no gradient; the others −A ρ / 4
  grad = jax.grad(lambda lp: policy_loss(lp, old, adv, m)[0])(logp)
  np.testing.assert_allclose(grad, [[0.0, 0.0, -0.5, 0.825, 0.0]], atol=1e-6)


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
  rng = np.random.default_rng(3)
  lp = rng.standard_normal((4, 5)).astype(np.float32)
  adv = rng.standard_normal((4, 5)).astype(np.float32)
  m = ragged_mask(rng, 4, 5) | np.eye(4, 5, dtype=bool)
  loss, met = jax.jit(policy_loss)(lp, lp, adv, m)
  assert float(loss) == pytest.approx(-adv[m].mean(), abs=1e-6)
  assert float(met["clip_fraction"]) == 0.0 and float(met["approx_kl"]) == 0.0


def test_value_loss_hand():
  v = f32([[1.0, 0.6, 2.0, 5.0]])
  old = f32([[0.0, 0.0, 2.0, 0.0]])
  ret = f32([[0.9, 0.0, 2.5, 0.0]])
  m = jnp.array([[True, True, True, False]])
  # unclipped (V−R)² = [0.01, 0.36, 0.25]; clipped V = [0.2, 0.2, 2.0] → [0.49, 0.04, 0.25]
  assert float(value_loss(v, old, ret, m)) == pytest.approx(0.5 * (0.49 + 0.36 + 0.25) / 3,
                                                            abs=1e-6)
  assert float(value_loss(v, old, ret, m, clip=None)) == pytest.approx(
      0.5 * (0.01 + 0.36 + 0.25) / 3, abs=1e-6)


def test_entropy_hand_and_numpy():
  logits = f32([[[0.0, 0.0, 0.0, 0.0], [0.0, -jnp.inf, -jnp.inf, -jnp.inf],
                 [1000.0, 0.0, -1000.0, 5.0]]])
  m = jnp.array([[True, False, False]])
  assert float(entropy_from_logits(logits, m)) == pytest.approx(math.log(4), abs=1e-6)
  m = jnp.array([[False, True, True]])
  h = entropy_from_logits(logits, m)
  assert np.isfinite(float(h)) and float(h) == pytest.approx(0.0, abs=1e-6)
  assert np.all(np.isfinite(jax.grad(entropy_from_logits)(logits, m)))
  rng = np.random.default_rng(4)
  z = (3.0 * rng.standard_normal((3, 4, 11))).astype(np.float64)
  m = ragged_mask(rng, 3, 4) | np.eye(3, 4, dtype=bool)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ent = -(p * np.log(p)).sum(-1)
  got = jax.jit(entropy_from_logits)(z.astype(np.float32), m)
  assert float(got) == pytest.approx(ent[m].mean(), abs=1e-5)


def test_per_token_rewards_hand():
  score = f32([2.0, -1.0, 5.0])
  logp = f32([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0]])
  ref = f32([[-1.5, -1.0, -0.5, 3.0], [-2.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  m = jnp.array([[True, True, True, False], [True, False, False, False], [False] * 4])
  # k1 Δ: row 0 [0.5, −1, 0], row 1 [1]; row 2 has no valid token and gets nothing
  got = per_token_rewards(score, logp, ref, m, 0.1)
  np.testing.assert_allclose(got, [[-0.05, 0.1, 2.0, 0.0], [-1.1, 0.0, 0.0, 0.0],
                                   [0.0] * 4], atol=1e-6)
  got = jax.jit(per_token_rewards, static_argnames="estimator")(score, logp, ref, m,
                                                                f32(0.1), estimator="k2")
  np.testing.assert_allclose(got, [[-0.0125, -0.05, 2.0, 0.0], [-1.05, 0.0, 0.0, 0.0],
                                   [0.0] * 4], atol=1e-6)
