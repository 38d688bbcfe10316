"""Statistics shared by the experiments: intervals over seeds and items, paired differences,
Holm's correction, the verdict vocabulary, and the records of preconditions and controls.

Every reproduction in ``experiments/`` decides from an interval (never from a mean alone),
states the precondition its claim needs and the controls that show its harness works, and
stores them in its JSON in the shapes built here, so that verdicts read the same everywhere.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

REPRODUCED = "reproduced"
PARTLY = "partly reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable here"

DEFINITIONS: dict[str, str] = {
  REPRODUCED: "The interval of the effect lies entirely on the side of zero the paper "
              "claims, and its precondition held.",
  PARTLY: "The interval lies entirely on the claimed side of zero, but the effect falls short "
          "of the magnitude or the scope the paper reports.",
  NOT_REPRODUCED: "The precondition held but the interval of the effect contains zero or lies "
                  "on the wrong side: the claimed effect was not seen here.",
  NOT_TESTABLE: "The precondition the claim depends on failed at this scale, so the "
                "experiment cannot confirm or refute the claim.",
}

# Elements gathered at once per seed in the bootstrap (bounds its memory to tens of MB).
_CHUNK = 1 << 22


def t_interval(values, confidence: float = 0.95, axis: int = 0):
  """Mean and two-sided Student-t confidence interval of ``values`` along ``axis``.

  The seeds of an experiment are few (3 to 10), so the interval uses the t quantile with
  n − 1 degrees of freedom rather than the normal one. With one seed there is no spread
  to estimate: the interval collapses to the mean (and callers should say so).

  Args:
    values: [..., seeds, ...] float array.
    confidence: coverage of the interval, e.g. 0.95.
    axis: the seed axis.

  Returns:
    (mean, low, high), each ``values`` without ``axis``, float64.
  """
  x = np.asarray(values, np.float64)
  n = x.shape[axis]
  mean = x.mean(axis=axis)
  if n < 2:
    return mean, mean.copy(), mean.copy()
  sem = x.std(axis=axis, ddof=1) / np.sqrt(n)
  half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sem
  return mean, mean - half, mean + half


def _rows(values, name: str) -> list[np.ndarray]:
  """``values`` ([seeds, items] array, or a list of 1-D per-seed arrays) as float64 rows."""
  if isinstance(values, (list, tuple)):
    rows = [np.asarray(r, np.float64) for r in values]
  else:
    x = np.asarray(values, np.float64)
    if x.ndim != 2:
      raise ValueError(f"{name}: expected [seeds, items], got shape {x.shape}")
    rows = list(x)
  if not rows:
    raise ValueError(f"{name}: no seeds")
  for s, r in enumerate(rows):
    if r.ndim != 1 or r.size == 0:
      raise ValueError(f"{name}: seed {s} must be a non-empty 1-D array, got shape {r.shape}")
    if not np.isfinite(r).all():
      raise ValueError(f"{name}: seed {s} has non-finite values")
  return rows


def check_resampling(num_resamples: int, confidence: float) -> None:
  """One-line errors for a bootstrap's ``num_resamples`` and ``confidence``."""
  if int(num_resamples) != num_resamples or num_resamples < 1:
    raise ValueError(f"num_resamples: must be a positive integer, got {num_resamples}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence: must be in (0, 1), got {confidence}")


def _seed_statistic(statistic, x: np.ndarray) -> np.ndarray:
  """``statistic`` over the last axis of ``x`` ([n, items] -> [n]), checked."""
  out = np.asarray(statistic(x, axis=-1), np.float64)
  if out.shape != x.shape[:-1]:
    raise ValueError(f"statistic: must reduce axis=-1 of {x.shape} to {x.shape[:-1]}, "
                     f"got {out.shape}")
  return out


def _resample(rows: list[np.ndarray], statistic, num_resamples: int, seed: int) -> np.ndarray:
  """[num_resamples] two-stage resamples of the mean over seeds of ``statistic`` per seed.

  A resample draws as many seeds as there are, with replacement; each drawn seed then has
  its own items drawn with replacement (as many as it has). Drawn seeds are handled one
  original seed at a time: every slot that drew seed s gets an independent item resample of
  seed s, vectorised over the slots (the loop is over seeds, not over resamples).
  """
  rng = np.random.default_rng(seed)
  num_seeds = len(rows)
  drawn = rng.integers(num_seeds, size=(num_resamples, num_seeds))  # [resamples, seeds]
  per_slot = np.empty(drawn.shape, np.float64)
  for s, row in enumerate(rows):
    slots = np.flatnonzero(drawn == s)
    step = max(1, _CHUNK // row.size)
    for start in range(0, slots.size, step):
      chunk = slots[start:start + step]
      items = rng.integers(row.size, size=(chunk.size, row.size))  # [slots, items]
      per_slot.flat[chunk] = _seed_statistic(statistic, row[items])
  return per_slot.mean(axis=1)


def percentile_interval(point: float, boot: np.ndarray, confidence: float) -> tuple[float, float]:
  """(low, high): the two-sided percentile interval of the resamples ``boot`` around the
  estimate ``point``."""
  low, high = (float(q) for q in np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2]))
  # A degenerate resample distribution (constant data) must give the interval [point, point]
  # even where a reduction rounds differently on the data and on its resamples.
  tol = 1e-12 * max(1.0, abs(point))
  low = point if point < low <= point + tol else low
  high = point if point - tol <= high < point else high
  return low, high


def two_sided_p(boot: np.ndarray) -> float:
  """The bootstrap p-value of "the effect is 0" from its resamples ``boot``:
  2·min(fraction ≤ 0, fraction ≥ 0), clipped to [1/len(boot), 1]."""
  p = 2 * min(np.mean(boot <= 0), np.mean(boot >= 0))
  return float(np.clip(p, 1 / len(boot), 1.0))


def _summary(rows, statistic, boot: np.ndarray, confidence: float) -> dict:
  point = float(np.mean([_seed_statistic(statistic, r[None])[0] for r in rows]))
  low, high = percentile_interval(point, boot, confidence)
  return {"mean": point, "low": low, "high": high,
          "num_seeds": len(rows), "num_items": int(sum(r.size for r in rows))}


def hierarchical_bootstrap(values, statistic=np.mean, num_resamples: int = 2000,
                           confidence: float = 0.95, seed: int = 0) -> dict:
  """Two-stage (seeds, then items within seeds) percentile bootstrap of a per-seed statistic.

  The estimate is the mean over seeds of ``statistic`` of each seed's items. Seeds are the
  replicates of the experiment (independent trainings), and each is weighted equally however
  many items it has: the target is the expected per-run figure a paper reports, not a pool
  dominated by the seeds that happened to produce the most items. With equal rows and the
  mean, this equals the pooled mean.

  Resampling both stages keeps the between-seed spread (a seed that is shifted as a whole
  moves every one of its items) and the within-seed one. It is conservative: for the mean,
  the resample variance is (var(seed means) + mean(within-seed var) / items) / seeds, so for
  iid items with no seed effect the interval is about √2 wider than the normal-theory one.
  With one seed it reduces to the ordinary item bootstrap; with one item per seed, to the
  seed bootstrap.

  Args:
    values: [seeds, items] float array, or a list of 1-D per-seed arrays whose lengths may
      differ. Must be finite.
    statistic: a reduction called as ``statistic(x, axis=-1)`` on [n, items] arrays
      (np.mean, np.median, ...).
    num_resamples: number of bootstrap resamples.
    confidence: coverage of the percentile interval, e.g. 0.95.
    seed: seed of the resampling generator (the result is a function of it).

  Returns:
    {"mean": the estimate on the data (named so whatever ``statistic`` is), "low", "high":
    the percentile interval, "num_seeds", "num_items": the total number of items over all
    seeds (seeds × items for a full array)}; Python floats and ints.
  """
  check_resampling(num_resamples, confidence)
  rows = _rows(values, "values")
  boot = _resample(rows, statistic, int(num_resamples), seed)
  return _summary(rows, statistic, boot, confidence)


def paired_difference(a, b, statistic=np.mean, num_resamples: int = 2000,
                      confidence: float = 0.95, seed: int = 0) -> dict:
  """Hierarchical bootstrap of ``a − b`` measured on the same seeds and items.

  Bootstrapping the difference array resamples the same seeds and items for both arms, so
  whatever the arms share (a hard prompt, a lucky seed) cancels instead of widening the
  interval.

  The p-value, for "difference = 0", is two-sided and read from the same resamples:
  2·min(fraction ≤ 0, fraction ≥ 0), clipped to [1/num_resamples, 1]. It agrees with the
  interval: a (1 − α) interval that excludes 0 has p ≤ α.

  The effect size is Cohen's d_z: the mean difference (mean of per-seed means) divided by
  the standard deviation (ddof=1) of all per-item differences pooled over seeds, so seed
  shifts in the difference count as noise. It is 0.0 when every difference is 0, and ±inf
  when the differences are a nonzero constant.

  Args:
    a, b: [seeds, items] float arrays, or lists of 1-D per-seed arrays, of the same shapes.
    statistic, num_resamples, confidence, seed: as in ``hierarchical_bootstrap``.

  Returns:
    ``hierarchical_bootstrap``'s dict of the difference plus "p_value" and "effect_size".
  """
  check_resampling(num_resamples, confidence)
  rows_a, rows_b = _rows(a, "a"), _rows(b, "b")
  if [r.shape for r in rows_a] != [r.shape for r in rows_b]:
    raise ValueError("b: must have the same seeds and items per seed as a")
  rows = [x - y for x, y in zip(rows_a, rows_b)]
  boot = _resample(rows, statistic, int(num_resamples), seed)
  out = _summary(rows, statistic, boot, confidence)
  out["p_value"] = two_sided_p(boot)
  pooled = np.concatenate(rows)
  mean_diff = float(np.mean([r.mean() for r in rows]))
  sd = float(pooled.std(ddof=1)) if pooled.size > 1 else 0.0
  if sd > 0:
    out["effect_size"] = mean_diff / sd
  else:
    out["effect_size"] = 0.0 if mean_diff == 0 else float(np.copysign(np.inf, mean_diff))
  return out


def holm(p_values: dict[str, float], alpha: float = 0.05) -> dict[str, dict]:
  """Holm–Bonferroni step-down correction of a family of tests.

  With the m p-values sorted ascending, p_(i) (i = 1..m) is adjusted to
  max_{j ≤ i} min(1, (m − j + 1)·p_(j)) (monotone in i), and a hypothesis is rejected when
  its adjusted p ≤ ``alpha``; this controls the family-wise error rate at ``alpha``.

  Args:
    p_values: name -> raw p-value in [0, 1].
    alpha: family-wise error rate.

  Returns:
    name -> {"p": raw, "p_adjusted": Holm-adjusted, "reject": bool}, in the input's order.
  """
  if not 0 < alpha < 1:
    raise ValueError(f"alpha: must be in (0, 1), got {alpha}")
  for name, p in p_values.items():
    if not 0 <= p <= 1:  # also rejects NaN
      raise ValueError(f"p_values[{name!r}]: must be in [0, 1], got {p}")
  names = sorted(p_values, key=lambda k: p_values[k])
  m = len(names)
  adjusted, running = {}, 0.0
  for i, name in enumerate(names):
    running = max(running, min(1.0, (m - i) * float(p_values[name])))
    adjusted[name] = running
  return {name: {"p": float(p), "p_adjusted": adjusted[name], "reject": adjusted[name] <= alpha}
          for name, p in p_values.items()}


def verdict(interval: dict, expected_sign: int, precondition_ok: bool,
            partly: bool = False) -> str:
  """The verdict on a claimed effect, decided from its interval, not its mean.

  A failed precondition makes the claim not testable here. Otherwise the interval
  [low, high] must lie strictly on the claimed side of 0 (an end at exactly 0 counts as
  containing it) for REPRODUCED, or PARTLY when the caller says the direction holds but the
  paper's magnitude or scope does not. An interval that contains 0 means the effect was not
  detected: the paper claims an effect and we could not see it, so NOT_REPRODUCED, as for
  an interval on the wrong side (``partly`` does not apply to either).

  Args:
    interval: a dict with "low" and "high" (e.g. from ``paired_difference``).
    expected_sign: +1 when the paper claims a positive effect, −1 a negative one.
    precondition_ok: whether the precondition the claim depends on held.
    partly: the caller's judgement that the magnitude falls short of the paper's.

  Returns:
    One of REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_TESTABLE.
  """
  if expected_sign not in (1, -1):
    raise ValueError(f"expected_sign: must be +1 or -1, got {expected_sign}")
  for key in ("low", "high"):
    if key not in interval or not np.isfinite(interval[key]):
      raise ValueError(f"interval[{key!r}]: missing or not finite")
  if not precondition_ok:
    return NOT_TESTABLE
  low, high = sorted((expected_sign * interval["low"], expected_sign * interval["high"]))
  if low > 0:
    return PARTLY if partly else REPRODUCED
  return NOT_REPRODUCED


def corrected_verdict(interval: dict, corrected: dict, expected_sign: int,
                      precondition_ok: bool, partly: bool = False) -> str:
  """``verdict`` for one of several comparisons with one baseline: the effect must also
  survive the correction (``corrected`` is its entry of ``holm``: "reject"), else the
  claim is NOT_REPRODUCED whatever its own 95% interval says."""
  decided = verdict(interval, expected_sign, precondition_ok, partly)
  if decided in (REPRODUCED, PARTLY) and not corrected["reject"]:
    return NOT_REPRODUCED
  return decided


def _plain(x):
  """numpy scalars and arrays as Python values, so the records serialise with ``json``."""
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  return x


def precondition(name: str, value, ok: bool, detail: str) -> dict:
  """The record of a precondition (what the claim needs to be testable at all), for JSON.

  Returns:
    {"name", "value", "ok": bool, "detail"}, numpy values as Python ones.
  """
  return {"name": str(name), "value": _plain(value), "ok": bool(ok), "detail": str(detail)}


def control(name: str, ok: bool, detail: str, value=None) -> dict:
  """The record of a control (a check that the harness itself works), for JSON.

  Returns:
    {"name", "value", "ok": bool, "detail"}, as ``precondition``.
  """
  return precondition(name, value, ok, detail)


def harness_message(controls) -> str | None:
  """"harness broken: <failed names, comma-separated>" when any control failed, else None.

  Args:
    controls: an iterable of ``control`` dicts.
  """
  if isinstance(controls, dict):
    raise ValueError("controls: expected an iterable of control dicts, got one dict")
  failed = [c["name"] for c in controls if not c["ok"]]
  return f"harness broken: {', '.join(failed)}" if failed else None


def _standardise(x: np.ndarray) -> np.ndarray:
  """Zero mean, unit std over [N]; a constant vector becomes zeros."""
  sd = x.std()
  return (x - x.mean()) / sd if sd > 1e-12 * max(1.0, np.abs(x).max()) else np.zeros_like(x)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation of two non-constant [N] vectors."""
  xc, yc = x - x.mean(), y - y.mean()
  return float(np.clip((xc @ yc) / np.sqrt((xc @ xc) * (yc @ yc)), -1.0, 1.0))


def disagreement_error_correlation(member_rewards, gold) -> dict:
  """Correlation between the members' disagreement and the ensemble mean's error.

  This is the precondition of the ensemble experiments: conservative objectives (worst
  case, uncertainty-weighted) can only help where the members disagree more on the samples
  their mean gets wrong. If the correlation is not positive the members share their errors
  and those objectives cannot act.

  disagreement = std over members (ddof=0); error = |z(member mean) − z(gold)|, with z the
  standardisation to zero mean and unit std over the N samples (the members and the gold
  reward need not share a scale). When the disagreement or the error is constant (e.g.
  identical members: zero disagreement everywhere) there is nothing to correlate and both
  correlations are 0.0, without division by zero.

  Args:
    member_rewards: [N, K] rewards of K ≥ 2 members, already normalised per member.
    gold: [N] gold rewards of the same samples.

  Returns:
    {"pearson": float, "spearman": float (Pearson of the average ranks)}.
  """
  r = np.asarray(member_rewards, np.float64)
  g = np.asarray(gold, np.float64)
  if r.ndim != 2 or r.shape[0] < 2 or r.shape[1] < 2:
    raise ValueError(f"member_rewards: expected [N >= 2, K >= 2], got shape {r.shape}")
  if g.shape != r.shape[:1]:
    raise ValueError(f"gold: expected shape ({r.shape[0]},), got {g.shape}")
  if not (np.isfinite(r).all() and np.isfinite(g).all()):
    raise ValueError("member_rewards, gold: must be finite")
  disagreement = r.std(axis=1)
  error = np.abs(_standardise(r.mean(axis=1)) - _standardise(g))
  # Constant up to rounding at its own scale: nothing to correlate.
  if disagreement.std() <= 1e-9 * max(1.0, float(np.abs(r).max())) or error.std() <= 1e-9:
    return {"pearson": 0.0, "spearman": 0.0}
  return {"pearson": _pearson(disagreement, error),
          "spearman": _pearson(stats.rankdata(disagreement), stats.rankdata(error))}
