"""The direct preference losses against hand-computed values."""

import math

import jax
import ml_collections
import numpy as np
import pytest

from rmjax.objectives import dpo

# two pairs: policy and reference log-probs of chosen (c) and rejected (r) responses
LOGP_C, LOGP_R = np.array([-4.0, -10.0]), np.array([-6.0, -9.0])
REF_C, REF_R = np.array([-5.0, -10.0]), np.array([-5.0, -8.0])
LEN_C, LEN_R = np.array([4.0, 5.0]), np.array([3.0, 3.0])
sig = lambda z: 1 / (1 + math.exp(-z))


def test_dpo_by_hand():
  # h = beta((lc - rc) - (lr - rr)): pair 0: 0.1 (1 - (-1)) = 0.2; pair 1: 0.1 (0 - (-1)) = 0.1
  losses, m = dpo.dpo(LOGP_C, LOGP_R, REF_C, REF_R, beta=0.1)
  np.testing.assert_allclose(losses, [-math.log(sig(0.2)), -math.log(sig(0.1))], rtol=1e-6)
  assert float(m["reward_accuracy"]) == 1.0
  assert float(m["reward_margin"]) == pytest.approx(0.15)


def test_cdpo_mixes_both_labels():
  losses, _ = dpo.dpo(LOGP_C, LOGP_R, REF_C, REF_R, beta=0.1, label_smoothing=0.25)
  want = [-(0.75 * math.log(sig(h)) + 0.25 * math.log(sig(-h))) for h in (0.2, 0.1)]
  np.testing.assert_allclose(losses, want, rtol=1e-6)


def test_ipo_by_hand():
  # log-ratio margins 2 and 1; target 1 / (2 * 0.5) = 1
  losses, _ = dpo.ipo(LOGP_C, LOGP_R, REF_C, REF_R, beta=0.5)
  np.testing.assert_allclose(losses, [1.0, 0.0], atol=1e-6)


def test_simpo_by_hand():
  # pair 0: 2 * (-4/4) - 2 * (-6/3) - 1 = -2 + 4 - 1 = 1
  losses, _ = dpo.simpo(LOGP_C, LOGP_R, LEN_C, LEN_R, beta=2.0, gamma=1.0)
  assert float(losses[0]) == pytest.approx(-math.log(sig(1.0)), rel=1e-6)
  # pair 1: 2 * (-2) - 2 * (-3) - 1 = 1
  assert float(losses[1]) == pytest.approx(-math.log(sig(1.0)), rel=1e-6)


def test_orpo_by_hand():
  # pair 0: mean log-probs -1 and -2; log odds = log(p / (1 - p))
  odds = lambda lp: lp - math.log(1 - math.exp(lp))
  want = 1.0 - 0.1 * math.log(sig(odds(-1.0) - odds(-2.0)))
  losses, m = dpo.orpo(LOGP_C, LOGP_R, LEN_C, LEN_R, lam=0.1)
  assert float(losses[0]) == pytest.approx(want, rel=1e-6)
  assert float(m["nll"]) == pytest.approx((1.0 + 2.0) / 2)


def test_log1mexp_is_accurate_at_both_ends():
  x = np.array([-1e-6, -0.5, -1.0, -30.0])
  np.testing.assert_allclose(dpo.log1mexp(x), np.log(-np.expm1(x)), rtol=1e-3)


def test_kto_by_hand():
  beta = 0.5
  # log-ratios: chosen 1, 0; rejected -1, -1; z = max(0, mean of all four) = 0
  losses, m = dpo.kto(LOGP_C, LOGP_R, REF_C, REF_R, beta=beta)
  assert float(m["kto_z"]) == 0.0
  want = [(1 - sig(beta * 1)) + (1 - sig(beta * 1)), (1 - sig(0.0)) + (1 - sig(beta * 1))]
  np.testing.assert_allclose(losses, want, rtol=1e-6)
  # a positive reference point: chosen log-ratio 3, rejected 1 -> z = 2
  losses, m = dpo.kto(np.array([3.0]), np.array([1.0]), np.zeros(1), np.zeros(1), beta=beta,
                      desirable_weight=2.0)
  assert float(m["kto_z"]) == pytest.approx(2.0)
  assert float(losses[0]) == pytest.approx(2 * (1 - sig(beta * 1)) + (1 - sig(beta * 1)))


def test_dpo_gradient_raises_the_chosen_and_lowers_the_rejected():
  grad = jax.grad(lambda c, r: dpo.dpo(c, r, REF_C, REF_R)[0].sum(), argnums=(0, 1))
  gc, gr = grad(LOGP_C, LOGP_R)
  assert np.all(np.asarray(gc) < 0) and np.all(np.asarray(gr) > 0)


def test_selm_optimism_by_hand_off_at_zero_and_lowers_the_sampled_response():
  # alpha beta (log pi(y) - log ref(y)): log-ratios 1 and 0 of LOGP_C against REF_C
  got = dpo.selm_optimism(LOGP_C, REF_C, alpha=0.5, beta=0.2)
  np.testing.assert_allclose(got, [0.1, 0.0], atol=1e-7)
  # SELM's default alpha on a log-ratio of -3: 0.001 * 0.1 * -3
  assert float(dpo.selm_optimism(np.array([-7.0]), np.array([-4.0]), 0.001, 0.1)[0]) == \
      pytest.approx(-3e-4, rel=1e-6)
  np.testing.assert_array_equal(dpo.selm_optimism(LOGP_C, REF_C, alpha=0.0, beta=0.1), 0.0)
  # descent on the term lowers log pi(y) of the sampled response, at rate alpha * beta
  grad = jax.grad(lambda y: dpo.selm_optimism(y, REF_C, 0.5, 0.2).sum())(LOGP_C)
  np.testing.assert_allclose(grad, [0.1, 0.1], rtol=1e-6)


def test_losses_dispatches_by_name_and_rejects_unknown():
  cfg = ml_collections.ConfigDict(dict(beta=0.1, label_smoothing=0.25, simpo_gamma=1.0,
                                       orpo_lambda=0.1, kto_desirable_weight=1.0,
                                       kto_undesirable_weight=1.0))
  for name in dpo.LOSSES:
    out, _ = dpo.losses(name, cfg, LOGP_C, LOGP_R, REF_C, REF_R, LEN_C, LEN_R)
    assert out.shape == (2,) and np.all(np.isfinite(out))
  with pytest.raises(ValueError, match="dpo.loss='rrhf'"):
    dpo.losses("rrhf", cfg, LOGP_C, LOGP_R, REF_C, REF_R, LEN_C, LEN_R)


def test_sequence_reward_is_what_each_loss_compares():
  logp, ref, length = np.array([-4.0, -2.0]), np.array([-5.0, -2.5]), np.array([4.0, 2.0])
  for name in ("dpo", "cdpo", "ipo", "kto"):  # β(log π − log ref)
    np.testing.assert_allclose(dpo.sequence_reward(name, 0.5, logp, ref, length), [0.5, 0.25])
  np.testing.assert_allclose(dpo.sequence_reward("simpo", 2.0, logp, None, length), [-2.0, -2.0])
  odds = lambda m: m - math.log(1 - math.exp(m))  # mean log-probs -1 and -1
  np.testing.assert_allclose(dpo.sequence_reward("orpo", 2.0, logp, None, length),
                             [odds(-1.0)] * 2, rtol=1e-6)
  with pytest.raises(ValueError, match="dpo.loss='x' is not one of"):
    dpo.sequence_reward("x", 1.0, logp, ref, length)
