"""The one preference-example schema every reader produces and every pipeline consumes.

A pair holds a prompt and two responses, as text or as token ids, plus optional
per-pair margin and weight. Synthetic data also carries the gold rewards of both
responses and whether its label was flipped by injected noise. ``source`` names where
the pair came from ("file:line"), so every later error can point at it.

Batches handed to models are dicts of arrays (``PairBatch`` names the keys):
prompt and response joined into one right-padded sequence per side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

Content = str | Sequence[int]


class DataError(ValueError):
  """A malformed example; the message starts with where it is (file:line)."""


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  prompt: Content
  chosen: Content
  rejected: Content
  margin: float | None = None
  weight: float | None = None
  source: str = ""  # "path:line" (1-based) or another locator.
  subset: str | None = None  # e.g. an LLMBar/RewardBench subset name, for per-subset eval.
  gold_chosen: float | None = None  # synthetic data only
  gold_rejected: float | None = None
  flipped: bool | None = None

  def __post_init__(self):
    where = self.source or "<pair>"
    for name in ("prompt", "chosen", "rejected"):
      value = getattr(self, name)
      if isinstance(value, str):
        continue
      if not isinstance(value, Sequence) or not all(isinstance(t, int) for t in value):
        raise DataError(f"{where}: field {name!r} must be text or a list of token ids, "
                        f"got {type(value).__name__}")
    for name in ("chosen", "rejected"):
      if len(getattr(self, name)) == 0:
        raise DataError(f"{where}: field {name!r} is empty")
    if isinstance(self.chosen, str) != isinstance(self.rejected, str):
      raise DataError(f"{where}: 'chosen' and 'rejected' must both be text or both token ids")
    if self.weight is not None and not self.weight >= 0:
      raise DataError(f"{where}: field 'weight' must be >= 0, got {self.weight}")


# Keys of a tokenised batch of pairs (values are arrays, batch-major).
CHOSEN_TOKENS, CHOSEN_MASK = "chosen_tokens", "chosen_mask"  # [batch, seq] int32 / bool
REJECTED_TOKENS, REJECTED_MASK = "rejected_tokens", "rejected_mask"
MARGIN, WEIGHT = "margin", "weight"  # [batch] float32 (0 and 1 when absent)
GOLD_CHOSEN, GOLD_REJECTED, FLIPPED = "gold_chosen", "gold_rejected", "flipped"
