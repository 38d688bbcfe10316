"""Deterministic batches from in-memory arrays (the synthetic task, cached features).

The batch at step ``s`` is a pure function of (seed, s): example ``i = s * batch + j``
comes from epoch ``i // n`` at position ``i % n`` of that epoch's seeded permutation.
So the data position saved in a checkpoint is just the step, and a resumed run sees
exactly the batches it would have seen.
"""

from __future__ import annotations

import numpy as np


class ArraySource:
  """Batches of rows from a dict of equally long, batch-major numpy arrays."""

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int,
               shuffle: bool = True):
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"arrays differ in length: {sizes}")
    self.arrays, self.batch_size, self.seed, self.shuffle = arrays, batch_size, seed, shuffle
    self.num_rows = next(iter(sizes.values()))
    if self.num_rows == 0:
      raise ValueError("no rows to batch")

  def _order(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(self.num_rows)
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

  def indices(self, step: int) -> np.ndarray:
    flat = step * self.batch_size + np.arange(self.batch_size)
    epochs, positions = np.divmod(flat, self.num_rows)
    out = np.empty_like(flat)
    for epoch in np.unique(epochs):
      where = epochs == epoch
      out[where] = self._order(int(epoch))[positions[where]]
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    rows = self.indices(step)
    return {k: v[rows] for k, v in self.arrays.items()}


def padded_batches(arrays: dict[str, np.ndarray], batch_size: int):
  """Every row once, in order; the last batch is padded by repeating its first row.

  Yields (batch, number of real rows).
  """
  n = len(next(iter(arrays.values())))
  for start in range(0, n, batch_size):
    rows = np.arange(start, min(start + batch_size, n))
    real = len(rows)
    rows = np.concatenate([rows, np.full(batch_size - real, rows[0])])
    yield {k: v[rows] for k, v in arrays.items()}, real
