"""Training and eval arrays for reward-model training, from the configured source."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from rmjax.data import schema, synthetic

TRAIN_KEYS = (schema.CHOSEN_TOKENS, schema.CHOSEN_MASK, schema.REJECTED_TOKENS,
              schema.REJECTED_MASK, schema.MARGIN, schema.WEIGHT, "prompt_len")
SOURCES = ("synthetic",)


@dataclasses.dataclass
class RMData:
  train: dict[str, np.ndarray]  # TRAIN_KEYS only ("prompt_len": tokens of the prompt)
  eval: dict[str, np.ndarray]  # TRAIN_KEYS and, for synthetic data, gold rewards and flags
  vocab_size: int
  data_hash: str


def arrays_hash(*splits: dict[str, np.ndarray]) -> str:
  digest = hashlib.sha256()
  for arrays in splits:
    for key in sorted(arrays):
      digest.update(key.encode())
      digest.update(np.ascontiguousarray(arrays[key]).tobytes())
  return digest.hexdigest()[:16]


def load(cfg) -> RMData:
  """``cfg.source``: "synthetic" (``cfg.synthetic`` holds SyntheticConfig fields)."""
  if cfg.source not in SOURCES:
    raise ValueError(f"data.source={cfg.source!r} is not one of {SOURCES}")
  fields = {f.name for f in dataclasses.fields(synthetic.SyntheticConfig)}
  unknown = set(cfg.synthetic.keys()) - fields
  if unknown:
    raise ValueError(f"data.synthetic has unknown fields {sorted(unknown)}")
  scfg = synthetic.SyntheticConfig(**cfg.synthetic.to_dict())
  train = synthetic.make_split(scfg, "train")
  evaluation = synthetic.make_split(scfg, "eval")
  return RMData(train={k: train[k] for k in TRAIN_KEYS},
                eval=evaluation,
                vocab_size=scfg.vocab_size, data_hash=arrays_hash(train, evaluation))
