"""Best-of-n math: the estimator against brute-force enumeration and closed forms, KL_bon by
hand, and the Gao fit on noiseless synthetic curves."""

import itertools
import math

import jax
import numpy as np
import pytest

from rmjax.objectives import bon


def brute_force(proxy, scores, n):
  """Mean of scores[winner] over every n-subset of the samples; the winner has the largest
  proxy, ties going to the larger sample index (the estimator's stable-sort rule)."""
  total, count = 0.0, 0
  for subset in itertools.combinations(range(len(proxy)), n):
    winner = max(subset, key=lambda j: (proxy[j], j))
    total += scores[winner]
    count += 1
  return total / count


@pytest.mark.parametrize("with_ties", [False, True])
def test_estimator_equals_enumeration_of_all_subsets(with_ties):
  rng = np.random.default_rng(0)
  num_prompts, num = 3, 7
  if with_ties:  # three distinct proxy values among seven samples
    proxy = rng.integers(0, 3, (num_prompts, num)).astype(np.float32)
  else:
    proxy = rng.standard_normal((num_prompts, num)).astype(np.float32)
  gold = rng.standard_normal((num_prompts, num)).astype(np.float32)
  ns = np.arange(1, num + 1)
  est = bon.best_of_n_estimate(proxy, {"gold": gold, "proxy": proxy}, ns)
  for p in range(num_prompts):
    for m, n in enumerate(ns):
      np.testing.assert_allclose(est["gold"][p, m], brute_force(proxy[p], gold[p], n),
                                 rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(est["proxy"][p, m], brute_force(proxy[p], proxy[p], n),
                                 rtol=1e-5, atol=1e-6)


def test_n_equals_one_is_mean_and_n_equals_N_is_the_argmax():
  rng = np.random.default_rng(1)
  proxy = rng.standard_normal((4, 50)).astype(np.float32)
  gold = rng.standard_normal((4, 50)).astype(np.float32)
  est = bon.best_of_n_estimate(proxy, {"gold": gold, "proxy": proxy}, [1, 50])
  np.testing.assert_allclose(est["gold"][:, 0], gold.mean(1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(est["proxy"][:, 0], proxy.mean(1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(est["proxy"][:, 1], proxy.max(1), rtol=1e-6)
  np.testing.assert_allclose(est["gold"][:, 1], gold[np.arange(4), proxy.argmax(1)], rtol=1e-6)


def test_weights_by_hand_small_n():
  # N = 4, n = 2: C(i−1, 1)/C(4, 2) = (0, 1, 2, 3)/6.
  np.testing.assert_allclose(bon.best_of_n_weights(4, [2])[0], np.array([0, 1, 2, 3]) / 6,
                             rtol=1e-12)


def test_stable_at_ten_thousand_samples():
  num = 10_000
  ns = np.array([1, 2, 10, 100, 1000, 4096, 9999, 10_000])
  w = bon.best_of_n_weights(num, ns)
  assert np.all(np.isfinite(w)) and np.all(w >= 0)
  # Σ_i C(i−1, n−1) = C(N, n) (hockey stick); the weights are not renormalised.
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-9)
  # With the proxy a permutation of 1..N scoring itself, E[max of an n-subset of
  # {1..N}] = n(N + 1)/(n + 1) exactly.
  ranks = np.random.default_rng(2).permutation(num).astype(np.float32) + 1
  est = np.asarray(jax.jit(lambda p: bon.best_of_n_estimate(p, p, ns))(ranks[None]))[0]
  assert np.all(np.isfinite(est))
  np.testing.assert_allclose(est, ns * (num + 1) / (ns + 1), rtol=2e-6)


def test_kl_bon_by_hand():
  kl = np.asarray(bon.kl_bon(np.array([1, 2, 4])))
  np.testing.assert_allclose(kl, [0.0, math.log(2) - 0.5, math.log(4) - 0.75], atol=1e-7)


def test_gao_fit_recovers_alpha_beta_from_noiseless_curve():
  ns = 2 ** np.arange(0, 13)
  kl = np.asarray(bon.kl_bon(ns), np.float64)
  d = np.sqrt(kl)
  gain = d * (1.3 - 0.21 * d)  # written out, not through gao_bon
  alpha, beta = bon.fit_gao_bon(kl, gain)
  assert alpha == pytest.approx(1.3, rel=1e-9)
  assert beta == pytest.approx(0.21, rel=1e-9)
  np.testing.assert_allclose(bon.gao_bon(d, alpha, beta), gain, rtol=1e-9, atol=1e-12)


def test_curves_normalise_members_before_combining():
  rng = np.random.default_rng(3)
  members = rng.standard_normal((5, 64, 3)).astype(np.float32)
  gold = rng.standard_normal((5, 64)).astype(np.float32)
  ns = [1, 8, 64]
  base = bon.best_of_n_curves(members, gold, ns, "uwo", lam=0.5)
  # Per-member affine rescaling changes nothing once members are normalised ...
  rescaled = members * np.array([1.0, 1e5, 0.01], np.float32) + np.array([0.0, 5.0, -3.0])
  again = bon.best_of_n_curves(rescaled, gold, ns, "uwo", lam=0.5)
  np.testing.assert_allclose(again["gold"], base["gold"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(again["proxy"], base["proxy"], rtol=1e-3, atol=1e-4)
  # ... but without normalisation the 10⁵× member decides which sample wins.
  raw = bon.best_of_n_curves(rescaled, gold, ns, "mean", normalize=False)
  only_big = bon.best_of_n_estimate(members[..., 1], gold, ns)
  np.testing.assert_allclose(raw["gold"], only_big, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(base["n"], ns)
  np.testing.assert_allclose(base["kl"], [0.0, math.log(8) - 7 / 8, math.log(64) - 63 / 64],
                             atol=1e-6)
  assert base["gold"].shape == base["proxy"].shape == (5, 3)
  np.testing.assert_allclose(base["gold"][:, 0], gold.mean(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call, words", [
    (lambda: bon.best_of_n_weights(5, [0, 2]), ["ns", "N=5"]),
    (lambda: bon.best_of_n_weights(5, [6]), ["ns", "N=5"]),
    (lambda: bon.best_of_n_weights(5, [1.5]), ["ns", "integers"]),
    (lambda: bon.best_of_n_weights(0, [1]), ["num_samples=0"]),
    (lambda: bon.best_of_n_estimate(np.zeros((2, 4)), np.zeros((2, 5)), [1]), ["scores"]),
    (lambda: bon.best_of_n_curves(np.zeros((2, 4)), np.zeros((2, 4)), [1]),
     ["member_rewards"]),
    (lambda: bon.best_of_n_curves(np.zeros((2, 4, 3)), np.zeros((2, 4)), [1], "max"),
     ["objective='max'"]),
    (lambda: bon.fit_gao_bon([0.0, 0.5], [0.0, 0.1]), ["two distinct"]),
    (lambda: bon.fit_gao_bon([0.1, 0.5], [0.0]), ["kl and gain"]),
])
def test_bad_arguments_are_named(call, words):
  with pytest.raises(ValueError) as err:
    call()
  for word in words:
    assert word in str(err.value)
