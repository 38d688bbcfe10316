"""Running moments against numpy over the concatenation; normalise-and-clip by hand."""

import math

import jax
import numpy as np
import pytest

from rmjax.objectives.running_stats import (
  RunningMoments,
  init_moments,
  merge_moments,
  moments_variance,
  normalize_and_clip,
  update_moments,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_updates_equal_numpy_of_concatenation(seed):
  rng = np.random.default_rng(seed)
  x = (5.0 + 3.0 * rng.standard_normal(200)).astype(np.float32)
  cuts = np.sort(rng.choice(np.arange(1, 200), 12, replace=False))
  chunks = np.split(x, cuts) + [x[:0]]  # sizes vary, one of them empty
  state = init_moments()
  update = jax.jit(update_moments)
  for c in chunks:
    state = update(state, c)
  assert float(state.count) == 200
  assert float(state.mean) == pytest.approx(x.astype(np.float64).mean(), rel=1e-5)
  assert float(moments_variance(state)) == pytest.approx(x.astype(np.float64).var(), rel=1e-4)


def test_merge_is_order_free():
  rng = np.random.default_rng(3)
  a, b, c = (rng.standard_normal(n).astype(np.float32) for n in (1, 7, 30))
  sa, sb, sc = (update_moments(init_moments(), v) for v in (a, b, c))
  left = merge_moments(merge_moments(sa, sb), sc)
  right = merge_moments(sc, merge_moments(sb, sa))
  for u, v in zip(left, right):
    assert float(u) == pytest.approx(float(v), rel=1e-5)
  both = np.concatenate([a, b, c])
  assert float(left.mean) == pytest.approx(both.mean(), rel=1e-5)
  assert float(left.m2) == pytest.approx(((both - both.mean()) ** 2).sum(), rel=1e-5)
  empty = merge_moments(init_moments(), init_moments())
  assert [float(v) for v in empty] == [0.0, 0.0, 0.0]
  assert float(moments_variance(empty)) == 0.0


def test_normalize_and_clip_hand():
  state = update_moments(init_moments(), np.array([1.0, 2.0, 3.0, 4.0], np.float32))
  assert isinstance(state, RunningMoments)
  sd = math.sqrt(1.25)  # μ = 2.5, population σ² = 1.25
  r = np.array([2.5, 3.0, 10.0, -10.0], np.float32)
  np.testing.assert_allclose(normalize_and_clip(r, state), [0.0, 0.5 / sd, 0.8, -0.8],
                             atol=1e-6)
  np.testing.assert_allclose(normalize_and_clip(r, state, clip=None),
                             [0.0, 0.5 / sd, 7.5 / sd, -12.5 / sd], rtol=1e-6)
  got = jax.jit(normalize_and_clip, static_argnames="clip")(r, state, clip=0.3)
  np.testing.assert_allclose(got, [0.0, 0.3, 0.3, -0.3], atol=1e-6)
