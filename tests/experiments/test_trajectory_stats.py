"""experiments/trajectory_stats.py: the seeds-then-prompts bootstrap of figures read off
trajectories, checked against stats.hierarchical_bootstrap, against by-hand resample
distributions, and for the pairing and alignment it promises."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from experiments import stats  # noqa: E402
from experiments import trajectory_stats as traj  # noqa: E402

first_point = lambda means: means[:, 0, :1]  # [n, points, fields] -> [n, 1]


def test_one_point_read_as_its_mean_is_the_hierarchical_bootstrap():
  rng = np.random.default_rng(3)
  values = rng.normal(size=(3, 40)) + np.array([[0.0], [1.0], [-0.5]])
  arm = traj.Trajectories([v[None, :, None] for v in values], first_point, aligned=True)
  (got,) = traj.trajectory_bootstrap(arm, num_resamples=500, seed=7)
  want = stats.hierarchical_bootstrap(values, num_resamples=500, seed=7)
  for key in ("mean", "low", "high", "num_seeds", "num_items"):
    assert got[key] == pytest.approx(want[key], rel=1e-12), key
  assert got["unreached"] == 0.0


def test_aligned_prompts_cancel_a_prompt_effect_that_independent_draws_do_not():
  """Gold rises by exactly 1 on every prompt between two points: read as the rise, fixed
  prompts give [1, 1]; drawing each point's prompts anew adds the prompts' spread."""
  prompts = np.random.default_rng(0).normal(size=30) * 3
  run = np.stack([prompts, prompts + 1.0])[..., None]  # [2 points, 30 prompts, 1 field]
  rise = lambda means: means[:, 1, :1] - means[:, 0, :1]
  (fixed,) = traj.trajectory_bootstrap(traj.Trajectories([run], rise, aligned=True))
  (fresh,) = traj.trajectory_bootstrap(traj.Trajectories([run], rise, aligned=False))
  assert (fixed["mean"], fixed["low"], fixed["high"]) == pytest.approx((1.0, 1.0, 1.0))
  assert fresh["mean"] == pytest.approx(1.0)
  assert fresh["low"] < 0.0 and fresh["high"] > 2.0  # sd of the rise ~ 3·sqrt(2/30) ~ 0.77


def test_unreadable_resamples_are_counted_and_left_out():
  """One seed, prompts {0, 1}: resample means 0, 0.5, 1 with probability 1/4, 1/2, 1/4;
  the reading refuses means above 0.75, so a quarter of the resamples are short."""
  run = np.array([[[0.0], [1.0]]])
  capped = lambda means: np.where(means[:, 0, :1] > 0.75, np.nan, means[:, 0, :1])
  (out,) = traj.trajectory_bootstrap(traj.Trajectories([run], capped, aligned=True),
                                     num_resamples=4000)
  assert out["mean"] == 0.5
  assert out["unreached"] == pytest.approx(0.25, abs=0.03)
  assert (out["low"], out["high"]) == (0.0, 0.5)  # only 0 and 0.5 remain


def test_a_seed_that_cannot_read_the_figure_gives_none():
  never = lambda means: np.full((len(means), 1), np.nan)
  assert traj.trajectory_bootstrap(
      traj.Trajectories([np.ones((2, 3, 1))], never, aligned=False)) == [None]


def test_difference_pairs_seeds_so_a_shared_seed_effect_cancels():
  """Seeds far apart, no prompt noise within a point, b = a − 2 on every prompt: every
  paired resample differs by exactly 2, while each arm's own interval spans the seeds."""
  seeds = [np.full((3, 5, 1), level) for level in (0.0, 10.0, 20.0)]
  a = traj.Trajectories(seeds, first_point, aligned=False)
  b = traj.Trajectories([s - 2.0 for s in seeds], first_point, aligned=False)
  (d,) = traj.trajectory_difference(a, b, num_resamples=300)
  assert (d["mean"], d["low"], d["high"]) == pytest.approx((2.0, 2.0, 2.0))
  assert d["p_value"] == pytest.approx(1 / 300)
  (own,) = traj.trajectory_bootstrap(a, num_resamples=300)
  assert own["low"] < 5.0 and own["high"] > 15.0


def test_bad_input_is_named():
  with pytest.raises(ValueError, match=r"runs\[1\]: expected a non-empty"):
    traj.Trajectories([np.ones((2, 3, 1)), np.ones((2, 3))], first_point, aligned=True)
  with pytest.raises(ValueError, match=r"runs\[0\]: non-finite"):
    traj.Trajectories([np.full((1, 2, 1), np.nan)], first_point, aligned=True)
  arm = traj.Trajectories([np.ones((1, 2, 1))], first_point, aligned=True)
  with pytest.raises(ValueError, match="b: has 2 seeds, a has 1"):
    traj.trajectory_difference(arm, traj.Trajectories([np.ones((1, 2, 1))] * 2, first_point,
                                                      aligned=True))
  with pytest.raises(ValueError, match="read: must map"):
    traj.trajectory_bootstrap(traj.Trajectories([np.ones((1, 2, 1))], lambda m: m[:, 0, 0],
                                                aligned=True))
