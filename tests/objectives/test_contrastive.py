"""Contrastive losses against hand-computed values and float64 numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax.objectives import contrastive as C


def close(a, b, tol=1e-6):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b, np.float64), rtol=tol, atol=tol)


def sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def test_info_nce_two_orthogonal_vectors_by_hand():
  # Cosines are the identity, so each row is −log(e^{1/τ} / (e^{1/τ} + e^0)).
  v = np.array([[3.0, 0.0], [0.0, 0.5]])
  for tau in (0.05, 0.5, 1.0):
    close(C.info_nce(v, v, temperature=tau), math.log(1.0 + math.exp(-1.0 / tau)), 1e-5)


def test_info_nce_three_vectors_by_hand():
  a = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
  b = [[3.0, 0.0], [1.0, 1.0], [2.0, 0.0]]
  r = 1.0 / math.sqrt(2.0)
  # cos(a_i, b_j), worked out from the directions (1,0), (0,1) and (1,1)/√2.
  cos = [[1.0, r, 1.0],
         [0.0, r, 0.0],
         [r, 1.0, r]]
  tau = 0.5
  rows = [math.log(sum(math.exp(c / tau) for c in cos[i])) - cos[i][i] / tau for i in range(3)]
  close(C.info_nce(a, b, temperature=tau), sum(rows) / 3, 1e-5)
  # One-sided: swapping the views uses b's rows as anchors, a different value here.
  rows_ba = [math.log(sum(math.exp(cos[j][i] / tau) for j in range(3))) - cos[i][i] / tau
             for i in range(3)]
  close(C.info_nce(b, a, temperature=tau), sum(rows_ba) / 3, 1e-5)
  assert abs(sum(rows) - sum(rows_ba)) > 1e-3


def test_views_shapes_and_contents():
  h_c = np.arange(6, dtype=np.float32).reshape(3, 2)
  h_r = np.ones((3, 2), np.float32)
  pair = C.pair_views(h_c, h_r)
  assert pair.shape == (6, 2)
  close(pair, np.concatenate([h_c, h_r]))
  diff = C.difference_views(h_c, h_r)
  assert diff.shape == (6, 2)
  close(diff[:3], h_c - h_r)
  close(diff[3:], h_r - h_c)
  with pytest.raises(ValueError, match="h_chosen and h_rejected"):
    C.pair_views(h_c, h_r[:2])


def sinkhorn_numpy(scores, epsilon, iterations):
  """SwAV's plain-domain Sinkhorn–Knopp in float64 on the [K, B] transpose, as SwAV writes it."""
  q = np.exp(np.asarray(scores, np.float64) / epsilon).T
  k, b = q.shape
  q /= q.sum()
  for _ in range(iterations):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= b
  return (q * b).T


SCORES = np.array([[0.9, 0.1, -0.3],
                   [0.8, 0.2, 0.0],
                   [0.7, -0.5, 0.4],
                   [0.6, 0.3, -0.1]], np.float32)


def test_sinkhorn_one_iteration_by_hand():
  # ε = 1, one iteration on a 2×2: columns of E = exp(S) each scaled to 1/2, rows to 1/2, ×2.
  s = np.array([[0.0, 1.0], [1.0, 1.0]])
  e = np.exp(s)
  col = e / e.sum(axis=0) / 2
  expected = col / col.sum(axis=1, keepdims=True)
  close(C.sinkhorn(s, epsilon=1.0, iterations=1), expected, 1e-6)


@pytest.mark.parametrize("epsilon,iterations", [(0.05, 3), (0.5, 1), (0.2, 5)])
def test_sinkhorn_matches_numpy_iterations(epsilon, iterations):
  q = C.sinkhorn(SCORES, epsilon=epsilon, iterations=iterations)
  assert q.shape == (4, 3)
  close(q, sinkhorn_numpy(SCORES, epsilon, iterations), 1e-5)
  close(q.sum(axis=1), np.ones(4), 1e-5)


def test_sinkhorn_equal_partition():
  q = C.sinkhorn(SCORES, epsilon=0.5, iterations=3)
  close(q.sum(axis=0), np.full(3, 4 / 3), 0.05)
  q = C.sinkhorn(SCORES, epsilon=0.5, iterations=100)
  close(q.sum(axis=0), np.full(3, 4 / 3), 1e-4)


def test_sinkhorn_no_gradient_and_large_scores_finite():
  grad = jax.grad(lambda s: jnp.sum(C.sinkhorn(s) * jnp.arange(3.0)))(jnp.asarray(SCORES))
  close(grad, np.zeros_like(SCORES))
  # 1000/0.05 overflows a plain exp; the log-domain iteration stays finite.
  q = C.sinkhorn(SCORES * 1000.0)
  assert np.all(np.isfinite(q))
  close(q.sum(axis=1), np.ones(4), 1e-5)


def swav_numpy(s_a, s_b, temperature, epsilon, iterations):
  def log_softmax(x):
    x = np.asarray(x, np.float64) / temperature
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))
  q_a = sinkhorn_numpy(s_a, epsilon, iterations)
  q_b = sinkhorn_numpy(s_b, epsilon, iterations)
  a_from_b = -np.mean(np.sum(q_b * log_softmax(s_a), axis=1))
  b_from_a = -np.mean(np.sum(q_a * log_softmax(s_b), axis=1))
  return 0.5 * (a_from_b + b_from_a)


def test_swav_loss_matches_numpy():
  s_b = SCORES[::-1] * 0.5
  for temperature, epsilon in ((0.1, 0.05), (0.5, 0.3)):
    close(C.swav_loss(SCORES, s_b, temperature=temperature, epsilon=epsilon),
          swav_numpy(SCORES, s_b, temperature, epsilon, 3), 1e-5)


def test_goal_conditioned_by_hand():
  h_pos = [[1.0, 0.0], [0.0, 1.0]]
  g_pos = [[2.0, 0.0], [1.0, 0.0]]   # cosines 1 and 0
  h_neg = [[1.0, 0.0]]
  g_neg = [[-1.0, 0.0]]              # cosine −1
  expected = (-math.log((sigmoid(1.0) + sigmoid(0.0)) / 2)
              - math.log(1.0 - sigmoid(-1.0)))
  close(C.goal_conditioned_loss(h_pos, g_pos, h_neg, g_neg), expected, 1e-6)
  with pytest.raises(ValueError, match="h_goal_neg"):
    C.goal_conditioned_loss(h_pos, g_pos, h_neg, g_pos)


def test_gradients_finite():
  key_c, key_r, key_p = jax.random.split(jax.random.key(0), 3)
  h_c = jax.random.normal(key_c, (4, 8))
  # Pair 0 has identical states, so its difference is the zero vector.
  h_r = jax.random.normal(key_r, (4, 8)).at[0].set(h_c[0])
  protos = jax.random.normal(key_p, (5, 8))

  def losses(h_c, h_r, protos):
    d1 = C.difference_views(h_c, h_r)
    d2 = C.difference_views(h_c * 1.1, h_r * 0.9)
    simcse = C.info_nce(d1, d2) + C.info_nce(C.pair_views(h_c, h_r), C.pair_views(h_r, h_c))
    swav = C.swav_loss(d1 @ protos.T, d2 @ protos.T)
    goal = C.goal_conditioned_loss(h_c, h_r, h_r, h_c)
    return simcse + swav + goal

  value, grads = jax.value_and_grad(losses, argnums=(0, 1, 2))(h_c, h_r, protos)
  assert np.isfinite(value)
  for g in grads:
    assert np.all(np.isfinite(g))
    assert np.any(g != 0)
  assert np.isfinite(jax.jit(losses)(h_c, h_r, protos))


@pytest.mark.parametrize("bad", [0.0, -0.1])
def test_non_positive_temperature_or_epsilon_raise(bad):
  v = np.eye(2)
  with pytest.raises(ValueError, match="temperature"):
    C.info_nce(v, v, temperature=bad)
  with pytest.raises(ValueError, match="temperature"):
    C.swav_loss(SCORES, SCORES, temperature=bad)
  with pytest.raises(ValueError, match="epsilon"):
    C.sinkhorn(SCORES, epsilon=bad)
  with pytest.raises(ValueError, match="epsilon"):
    C.swav_loss(SCORES, SCORES, epsilon=bad)
  with pytest.raises(ValueError, match="iterations"):
    C.sinkhorn(SCORES, iterations=0)
