"""Summaries over seeds shared by the experiments: mean and Student-t 95% interval."""

from __future__ import annotations

import numpy as np
from scipy import stats


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
