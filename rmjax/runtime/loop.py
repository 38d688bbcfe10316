"""The one training loop every program runs."""

from __future__ import annotations

import math


def check_finite(loss: float, step: int) -> None:
  if not math.isfinite(loss):
    raise FloatingPointError(
        f"non-finite loss {loss} at step {step}; the last good checkpoint is kept")
