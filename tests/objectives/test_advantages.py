"""Critic-free advantages and loss reductions: hand-computed values and a numpy reference."""

import numpy as np
import pytest

from rmjax.objectives import advantages as adv
from rmjax.objectives import ppo


def numpy_rloo(r, k):
  g = np.asarray(r, np.float64).reshape(-1, k)
  out = np.empty_like(g)
  for p in range(g.shape[0]):
    for i in range(k):
      out[p, i] = g[p, i] - np.mean(np.delete(g[p], i))
  return out.reshape(-1)


def numpy_grpo(r, k, scale, eps):
  g = np.asarray(r, np.float64).reshape(-1, k)
  out = g - g.mean(axis=1, keepdims=True)
  if scale:
    out = out / (g.std(axis=1, ddof=1, keepdims=True) + eps)
  return out.reshape(-1)


FIXED = np.array([1.0, 2.0, 4.0, 9.0, -1.0, -1.0, -1.0, -1.0, 0.5, 3.0, -2.0, 0.0], np.float32)


def test_rloo_by_hand():
  # group [1, 2, 4]: 1 - 3 = -2, 2 - 2.5 = -0.5, 4 - 1.5 = 2.5
  np.testing.assert_allclose(adv.rloo(np.array([1.0, 2.0, 4.0]), 3), [-2.0, -0.5, 2.5])


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_rloo_matches_numpy_on_a_fixed_batch(k):
  np.testing.assert_allclose(adv.rloo(FIXED, k), numpy_rloo(FIXED, k), rtol=1e-6, atol=1e-6)


def test_grpo_by_hand():
  # group [1, 3]: mean 2, sample std sqrt(2); advantages -+1/sqrt(2) (eps 0)
  np.testing.assert_allclose(adv.group_relative(np.array([1.0, 3.0]), 2, eps=0.0),
                             [-2 ** -0.5, 2 ** -0.5], rtol=1e-6)
  np.testing.assert_allclose(adv.group_relative(np.array([1.0, 3.0]), 2, scale=False),
                             [-1.0, 1.0])


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("scale", [True, False])
def test_group_relative_matches_numpy_on_a_fixed_batch(k, scale):
  np.testing.assert_allclose(adv.group_relative(FIXED, k, scale=scale, eps=1e-4),
                             numpy_grpo(FIXED, k, scale, 1e-4), rtol=1e-5, atol=1e-6)


def test_equal_rewards_in_a_group_give_zero_advantage():
  out = adv.group_relative(np.array([-1.0, -1.0, -1.0, -1.0]), 4)
  np.testing.assert_array_equal(out, np.zeros(4))


def test_groups_are_checked():
  with pytest.raises(ValueError, match="groups of k=3"):
    adv.rloo(np.ones(4), 3)
  with pytest.raises(ValueError, match="k >= 2"):
    adv.group_relative(np.ones(4), 1)


def test_reinforce_pp_returns_to_go_whitened_over_the_batch():
  rewards = np.array([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]], np.float32)
  mask = np.array([[True, True, True], [True, True, False]])
  # returns-to-go [3, 2, 2], [4, 1, -]; mean 12/5, population var over the 5 tokens
  to_go = np.array([3.0, 2.0, 2.0, 4.0, 1.0])
  want = (to_go - to_go.mean()) / np.sqrt(to_go.var() + 1e-6)
  got = adv.reinforce_pp(rewards, mask)
  np.testing.assert_allclose(np.asarray(got)[mask], want, rtol=1e-5)
  assert float(got[1, 2]) == 0.0


def test_per_token_broadcasts_only_to_valid_tokens():
  mask = np.array([[True, True, False], [True, False, False]])
  np.testing.assert_array_equal(adv.per_token(np.array([2.0, -1.0]), mask),
                                [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])


def test_aggregations_by_hand():
  x = np.array([[1.0, 3.0, 100.0], [6.0, 100.0, 100.0]], np.float32)
  mask = np.array([[True, True, False], [True, False, False]])
  assert float(ppo.aggregate(x, mask, "token_mean")) == pytest.approx(10.0 / 3)
  assert float(ppo.aggregate(x, mask, "sequence_mean")) == pytest.approx((2.0 + 6.0) / 2)
  assert float(ppo.aggregate(x, mask, "constant")) == pytest.approx(10.0 / 6)
  with pytest.raises(ValueError, match="aggregation"):
    ppo.aggregate(x, mask, "sum")


def test_policy_loss_reduces_by_the_given_aggregation():
  # ratio 1 everywhere: the per-token loss is -A
  logp = np.zeros((2, 2), np.float32)
  a = np.array([[1.0, 1.0], [4.0, 0.0]], np.float32)
  mask = np.array([[True, True], [True, False]])
  loss, _ = ppo.policy_loss(logp, logp, a, mask, 0.2, "sequence_mean")
  assert float(loss) == pytest.approx(-(1.0 + 4.0) / 2)
  loss, _ = ppo.policy_loss(logp, logp, a, mask, 0.2, "token_mean")
  assert float(loss) == pytest.approx(-6.0 / 3)
