"""Intervals of figures read off training trajectories: the seeds-then-prompts bootstrap of
``stats.hierarchical_bootstrap`` where the statistic is a whole trajectory's reading.

A figure such as "gold at KL 0.5" is not a mean over items: it is read off a run's curve of
per-point means (smoothed, then interpolated at a crossing). Its interval therefore
resamples the runs' records, not the figures: a resample draws the seeds with replacement,
then, within each drawn seed, the prompts of every point of its trajectory, rebuilds the
curve from the resampled means and reads the figure again. Each seed counts equally, as in
``stats.hierarchical_bootstrap``; the between-seed spread and the prompt noise of every
point (including the KL axis the figure is read at) both reach the interval.

A figure a resample cannot read (a KL its curve never reaches) is NaN there. Intervals are
the percentiles of the resamples that read one, and ``unreached`` says what fraction did
not: a large fraction means the figure sits at the edge of what the runs reach.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from experiments import stats

_CHUNK = 1 << 22  # elements gathered at once (bounds the memory to tens of MB)


@dataclasses.dataclass(frozen=True)
class Trajectories:
  """One method's runs, one per seed, and how to read its figures off them.

  runs: per seed, a [points, items, fields] array: at each point of the trajectory (an
    iteration, an evaluation) each item's (prompt's) values of the fields (e.g. KL, gold).
  read: [n, points, fields] per-point means -> [n, outputs] figures, NaN where undefined.
  aligned: item j is the same prompt at every point (evaluations on fixed prompts), so a
    resample draws one set of prompts for the whole trajectory; otherwise (fresh prompts
    every iteration) each point's prompts are drawn independently.
  """
  runs: list
  read: Callable[[np.ndarray], np.ndarray]
  aligned: bool

  def __post_init__(self):
    if not self.runs:
      raise ValueError("runs: no seeds")
    for s, run in enumerate(self.runs):
      if np.ndim(run) != 3 or 0 in np.shape(run):
        raise ValueError(f"runs[{s}]: expected a non-empty [points, items, fields] array, "
                         f"got shape {np.shape(run)}")
      if not np.isfinite(run).all():
        raise ValueError(f"runs[{s}]: non-finite values")

  def per_seed(self) -> np.ndarray:
    """[seeds, outputs]: the figures read off each seed's own trajectory."""
    return np.stack([self._read(np.asarray(r, np.float64).mean(axis=1)[None])[0]
                     for r in self.runs])

  def _read(self, means: np.ndarray) -> np.ndarray:
    out = np.asarray(self.read(means), np.float64)
    if out.ndim != 2 or out.shape[0] != means.shape[0]:
      raise ValueError(f"read: must map [{means.shape[0]}, points, fields] to "
                       f"[{means.shape[0]}, outputs], got shape {out.shape}")
    return out

  def resampled(self, drawn: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[resamples, seeds, outputs]: the figures of every slot's resampled trajectory, slot
    (r, j) being seed drawn[r, j] with its prompts drawn with replacement."""
    out = None
    for s, run in enumerate(self.runs):
      run = np.asarray(run, np.float64)
      points, items = run.shape[:2]
      slots = np.flatnonzero(drawn == s)
      step = max(1, _CHUNK // run.size)
      for start in range(0, slots.size, step):
        chunk = slots[start:start + step]
        index = rng.integers(items, size=(chunk.size, 1 if self.aligned else points, items))
        means = run[np.arange(points)[None, :, None], index].mean(axis=2)
        values = self._read(means)
        if out is None:
          out = np.full((drawn.size, values.shape[1]), np.nan)
        out[chunk] = values
    return out.reshape(*drawn.shape, -1)


def _intervals(per_seed: np.ndarray, boot: np.ndarray, confidence: float, items: int,
               with_p: bool) -> list[dict | None]:
  """Per output: the mean over seeds and the percentile interval of the resamples that
  read it (None where some seed's own trajectory cannot)."""
  out = []
  for o in range(per_seed.shape[1]):
    b = boot[:, o]
    read = np.isfinite(b)
    if not np.isfinite(per_seed[:, o]).all() or not read.any():
      out.append(None)
      continue
    point = float(per_seed[:, o].mean())
    low, high = stats.percentile_interval(point, b[read], confidence)
    row = {"mean": point, "low": low, "high": high, "num_seeds": per_seed.shape[0],
           "num_items": items, "unreached": float(1 - read.mean())}
    if with_p:
      row["p_value"] = stats.two_sided_p(b[read])
    out.append(row)
  return out


def _items(arm: Trajectories) -> int:
  return int(sum(np.shape(r)[1] for r in arm.runs))


def _draw(num_seeds: int, num_resamples: int, confidence: float, seed: int):
  """(generator, [resamples, seeds] drawn seed indices) of one bootstrap, its settings
  checked."""
  stats.check_resampling(num_resamples, confidence)
  rng = np.random.default_rng(seed)
  return rng, rng.integers(num_seeds, size=(int(num_resamples), num_seeds))


def trajectory_bootstrap(arm: Trajectories, num_resamples: int = 2000,
                         confidence: float = 0.95, seed: int = 0) -> list[dict | None]:
  """Per figure of ``arm.read``: {"mean": the mean over seeds of each seed's figure, "low",
  "high": the percentile interval, "num_seeds", "num_items": prompts per point summed over
  seeds, "unreached": the fraction of resamples that could not read it}, or None where a
  seed's own trajectory cannot (e.g. never reaches the KL)."""
  rng, drawn = _draw(len(arm.runs), num_resamples, confidence, seed)
  boot = arm.resampled(drawn, rng).mean(axis=1)
  return _intervals(arm.per_seed(), boot, confidence, _items(arm), with_p=False)


def trajectory_difference(a: Trajectories, b: Trajectories, num_resamples: int = 2000,
                          confidence: float = 0.95, seed: int = 0) -> list[dict | None]:
  """Per figure: the interval of a − b, paired by seed (seed j of ``a`` ran with seed j of
  ``b``): a resample draws the same seeds for both, and each arm's prompts independently
  (two methods' trajectories share no prompts point by point). Rows as
  ``trajectory_bootstrap``'s plus "p_value" (``stats.two_sided_p``)."""
  if len(a.runs) != len(b.runs):
    raise ValueError(f"b: has {len(b.runs)} seeds, a has {len(a.runs)}; the difference "
                     "pairs them by seed")
  rng, drawn = _draw(len(a.runs), num_resamples, confidence, seed)
  boot = (a.resampled(drawn, rng) - b.resampled(drawn, rng)).mean(axis=1)
  return _intervals(a.per_seed() - b.per_seed(), boot, confidence, _items(a) + _items(b),
                    with_p=True)
