"""Preference strength of a dataset's pairs, measured by a trained ensemble and used in training.

The math (μ, σ, out-of-fold scoring, flipping, smoothing, margins) is in
``rmjax.objectives.preference_strength``; this module holds the bookkeeping around it:

* folds: an ensemble trained with ``ensemble.folds = F`` gives member m every training
  pair except those of fold ``m % F`` (``pair_folds``: a seeded partition of the pairs);
* the strength file ``rmjax score-pairs`` writes (``save``/``load``): μ, σ and every
  member's Δ per pair, with the data hash it belongs to;
* ``StrengthBatches``: a training source whose batches carry the strength options of
  ``data.strength`` (flipped labels, the adaptive margin, per-pair label smoothing),
  looked up by each row's "index" (its position in the training split).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from rmjax.data import schema
from rmjax.objectives import preference_strength as ps
from rmjax.rm.step import ADAPTIVE_MARGIN, LABEL_SMOOTHING

INDEX = "index"  # [B] int: a training row's position in its split
FILE_NAME = "strength.npz"
METHODS = ("out_of_fold", "in_sample")
_SWAPPED = ((schema.CHOSEN_TOKENS, schema.REJECTED_TOKENS),
            (schema.CHOSEN_MASK, schema.REJECTED_MASK),
            (schema.GOLD_CHOSEN, schema.GOLD_REJECTED))


def pair_folds(num_pairs: int, folds: int, seed: int) -> np.ndarray:
  """int [N]: the fold of each pair, a seeded partition into ``folds`` near-equal parts."""
  if folds < 1:
    raise ValueError(f"folds={folds} must be >= 1")
  order = np.random.default_rng([seed, 0xF01D]).permutation(num_pairs)
  out = np.empty(num_pairs, np.int64)
  out[order] = np.arange(num_pairs) % folds
  return out


def member_folds(k: int, folds: int) -> np.ndarray:
  """int [K]: the fold member m is trained without (``m % folds``)."""
  return np.arange(k) % folds


def training_records(num_pairs: int, folds: int, seed: int, member: int) -> np.ndarray:
  """Indices of the pairs member ``member`` trains on: all but its held-out fold."""
  return np.flatnonzero(pair_folds(num_pairs, folds, seed) != member % folds)


@dataclasses.dataclass(frozen=True)
class Strength:
  """Strength of N pairs under M members (``rmjax score-pairs``)."""

  mu: np.ndarray  # [N] mean Δ over the members that score each pair
  sigma: np.ndarray  # [N] their population std
  deltas: np.ndarray  # [N, M] every member's Δ = r(chosen) − r(rejected)
  pair_fold: np.ndarray  # [N] int (all 0 without folds)
  member_fold: np.ndarray  # [M] int
  method: str  # "out_of_fold" or "in_sample"
  data_hash: str  # of the run's data (``rm_data.RMData.data_hash``)

  @classmethod
  def from_deltas(cls, deltas, folds: int, seed: int, data_hash: str,
                  in_sample: bool = False) -> Strength:
    """Strength from [N, M] member Δ of an ensemble trained with ``folds`` (0: none)."""
    deltas = np.asarray(deltas, np.float32)
    n, m = deltas.shape
    pair_fold = pair_folds(n, folds, seed) if folds else np.zeros(n, np.int64)
    member_fold = member_folds(m, folds) if folds else np.zeros(m, np.int64)
    if in_sample or not folds:
      mu, sigma = ps.preference_strength(deltas)
    else:
      mu, sigma = ps.out_of_fold_strength(deltas, member_fold, pair_fold)
    method = "in_sample" if in_sample or not folds else "out_of_fold"
    return cls(np.asarray(mu), np.asarray(sigma), deltas, pair_fold, member_fold, method,
               data_hash)


def save(path: str | os.PathLike, strength: Strength) -> None:
  """Writes ``strength`` as an .npz atomically (a temporary file, then a rename)."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  np.savez(tmp, **{f.name: np.asarray(getattr(strength, f.name))
                   for f in dataclasses.fields(Strength)})
  os.replace(tmp, path)


def load(path: str | os.PathLike, data_hash: str | None = None,
         num_pairs: int | None = None) -> Strength:
  """A strength file, checked against the data it is to be used with."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data.strength.path={path}: no such file; write it with "
                            "rmjax score-pairs")
  with np.load(path) as f:
    missing = [x.name for x in dataclasses.fields(Strength) if x.name not in f]
    if missing:
      raise ValueError(f"{path}: not a strength file (missing {missing})")
    fields = {x.name: f[x.name] for x in dataclasses.fields(Strength)}
  fields["method"], fields["data_hash"] = str(fields["method"]), str(fields["data_hash"])
  strength = Strength(**fields)
  if data_hash is not None and strength.data_hash != data_hash:
    raise ValueError(f"{path} was scored on data {strength.data_hash}, but this run's data "
                     f"is {data_hash}; score these pairs with rmjax score-pairs")
  if num_pairs is not None and len(strength.mu) != num_pairs:
    raise ValueError(f"{path} has {len(strength.mu)} pairs; the training split has {num_pairs}")
  return strength


@dataclasses.dataclass(frozen=True)
class StrengthOptions:
  """What ``data.strength`` does with the strength μ of each training pair (§2)."""

  flip: np.ndarray  # [N] bool: swap chosen and rejected
  margin: np.ndarray | None  # [N] float32 adaptive margin (μ of the pair as labelled)
  smoothing: np.ndarray | None  # [N] float32 per-pair α

  @classmethod
  def from_config(cls, cfg, mu: np.ndarray) -> StrengthOptions:
    """``cfg``: flip_fraction, smoothing (α on the pairs with μ < 0; smoothing every pair
    is ``loss.label_smoothing``), adaptive_margin.

    Flipping comes first: a flipped pair's strength becomes −μ, and the margin and the
    "μ < 0" test of smoothing read the strength of the pairs as finally labelled.
    """
    flip = np.asarray(ps.flip_lowest(mu, float(cfg.flip_fraction)))
    labelled = np.where(flip, -mu, mu).astype(np.float32)
    margin = labelled if cfg.adaptive_margin else None
    smoothing = (np.asarray(ps.smoothing_where_negative(labelled, float(cfg.smoothing)))
                 if cfg.smoothing else None)
    return cls(flip, margin, smoothing)


class StrengthBatches:
  """A training source's batches with ``StrengthOptions`` applied row by row (by "index")."""

  def __init__(self, source, options: StrengthOptions):
    self.source, self.options = source, options

  def batch(self, step: int) -> dict[str, np.ndarray]:
    out = dict(self.source.batch(step))
    if INDEX not in out:
      raise ValueError("strength options need each training row's 'index' in its split")
    index = out[INDEX]
    flip = self.options.flip[index]
    for a, b in _SWAPPED:
      if a in out:
        rows = flip.reshape(-1, *[1] * (out[a].ndim - 1))
        out[a], out[b] = np.where(rows, out[b], out[a]), np.where(rows, out[a], out[b])
    if schema.FLIPPED in out:
      out[schema.FLIPPED] = out[schema.FLIPPED] ^ flip
    if self.options.margin is not None:
      out[ADAPTIVE_MARGIN] = self.options.margin[index]
    if self.options.smoothing is not None:
      out[LABEL_SMOOTHING] = self.options.smoothing[index]
    return out
