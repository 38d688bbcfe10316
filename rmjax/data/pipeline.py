"""A grain pipeline from preference records (``tfds_builder``) to fixed-shape pair batches.

Record -> example (``pair_example``): each side is prompt + response joined in one
right-padded int32 row of ``seq_len`` with a bool mask. Too long a pair is cut so the reward,
read at the last real token, still sees each response's end: a response keeps its last
``max_response_len`` tokens (at most ``seq_len``); then the prompt, shared by both sides,
keeps its first ``keep_prompt_start`` tokens (e.g. 1 for BOS) and as many of its last tokens
as fit beside the longer response. Both sides so see the same prompt tokens, and
"prompt_len" [batch] int32 counts them, as in ``synthetic.make_split``.

Order: the split's records are sharded across hosts first (strided: host h of H takes
records h, h+H, ...; the remainder is dropped by default so every host has as many batches),
then shuffled by index (grain's index_shuffle, seeded per epoch: epoch e of seed s uses
seed h(s) + e with h a hash, so epochs reshuffle and nearby seeds do not share epochs),
repeated for ``num_epochs`` (None: forever), batched (``batch_size`` per host; a batch may
span two epochs, as in ``ArraySource``) and, with ``buckets``, each batch is cut to the
smallest bucket width that holds its longest row (fewer padded tokens, one compilation per
bucket; rows are not regrouped by length).

The whole chain is a grain ``MapDataset``, so batch ``step`` is a pure function of (data,
config, shard, step): ``PairPipeline.batch(step)`` is random access like
``ArraySource.batch(step)``, and ``iter(pipeline)`` is a prefetching grain iterator whose
``get_state()`` is a small JSON-able dict ({"next_index": step, ...}) that ``set_state``
restores exactly (it refuses a state from another seed, batch size or sharding).

Batch keys: the schema's CHOSEN/REJECTED_TOKENS [batch, width] int32, *_MASK bool, MARGIN,
WEIGHT float32 [batch]; GOLD_CHOSEN, GOLD_REJECTED, FLIPPED where the records have them;
"prompt_len" int32 and "index" int32 (the record's position in its split) [batch].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from rmjax.data import schema

PROMPT_LEN, INDEX = "prompt_len", "index"
_OPTIONAL = ((schema.GOLD_CHOSEN, "gold_chosen", np.float32),
             (schema.GOLD_REJECTED, "gold_rejected", np.float32),
             (schema.FLIPPED, "flipped", np.bool_))


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  batch_size: int  # per host
  seq_len: int
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None  # None: repeat forever
  max_response_len: int | None = None  # None: seq_len
  keep_prompt_start: int = 0  # prompt tokens kept at its start when it is cut (BOS)
  pad_id: int = 0
  buckets: tuple[int, ...] | None = None  # batch widths; seq_len is always the last
  drop_remainder: bool = True  # a last short batch (finite num_epochs) is dropped
  read_threads: int = 4  # grain ReadOptions for iter(): threads and batches prefetched
  prefetch: int = 8

  def __post_init__(self):
    checks = {
        "batch_size must be >= 1": self.batch_size >= 1,
        "seq_len must be >= 1": self.seq_len >= 1,
        "max_response_len must be in [1, seq_len]":
            self.max_response_len is None or 1 <= self.max_response_len <= self.seq_len,
        "keep_prompt_start must be >= 0": self.keep_prompt_start >= 0,
        "num_epochs must be >= 1 or None": self.num_epochs is None or self.num_epochs >= 1,
        "buckets must lie in [1, seq_len]":
            not self.buckets or all(1 <= b <= self.seq_len for b in self.buckets),
        "seed must be in [0, 2**32)": 0 <= self.seed < 2**32}
    if problems := [message for message, ok in checks.items() if not ok]:
      raise ValueError(f"Invalid PipelineConfig ({self}): " + "; ".join(problems))


def truncate_pair(prompt: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, seq_len: int,
                  max_response_len: int | None = None, keep_prompt_start: int = 0):
  """-> (prompt, chosen, rejected) cut to fit ``seq_len`` per side (module docstring)."""
  limit = min(max_response_len or seq_len, seq_len)
  chosen, rejected = chosen[max(len(chosen) - limit, 0):], rejected[max(len(rejected) - limit, 0):]
  room = seq_len - max(len(chosen), len(rejected))
  if len(prompt) > room:
    head = min(keep_prompt_start, room)
    prompt = np.concatenate([prompt[:head], prompt[len(prompt) - (room - head):]])
  return prompt, chosen, rejected


def pair_example(record: dict, index: int, cfg: PipelineConfig) -> dict[str, np.ndarray]:
  """One decoded record (``tfds_builder`` features) -> one unbatched example."""
  prompt, chosen, rejected = truncate_pair(
      *(np.asarray(record[f], np.int32) for f in ("prompt", "chosen", "rejected")),
      cfg.seq_len, cfg.max_response_len, cfg.keep_prompt_start)
  out = {schema.MARGIN: np.float32(record["margin"]), schema.WEIGHT: np.float32(record["weight"]),
         PROMPT_LEN: np.int32(len(prompt)), INDEX: np.int32(index)}
  for (tok_key, mask_key), response in (
      ((schema.CHOSEN_TOKENS, schema.CHOSEN_MASK), chosen),
      ((schema.REJECTED_TOKENS, schema.REJECTED_MASK), rejected)):
    n = len(prompt) + len(response)
    tokens = np.full(cfg.seq_len, cfg.pad_id, np.int32)
    tokens[:len(prompt)], tokens[len(prompt):n] = prompt, response
    out[tok_key], out[mask_key] = tokens, np.arange(cfg.seq_len) < n
  for key, field, dtype in _OPTIONAL:
    if field in record:
      out[key] = np.asarray(record[field], dtype)
  return out


_SEQUENCE_KEYS = (schema.CHOSEN_TOKENS, schema.CHOSEN_MASK, schema.REJECTED_TOKENS,
                  schema.REJECTED_MASK)


def bucket_batch(batch: dict, buckets: Sequence[int], seq_len: int) -> dict:
  """Cuts [batch, seq_len] rows to the smallest bucket width holding every real token."""
  longest = int(max(batch[schema.CHOSEN_MASK].sum(1).max(),
                    batch[schema.REJECTED_MASK].sum(1).max()))
  width = min([b for b in sorted(buckets) if b >= longest] + [seq_len])
  return {k: v[:, :width] if k in _SEQUENCE_KEYS else v for k, v in batch.items()}


def _epoch_seed(seed: int) -> int:
  """A well-mixed 32-bit base seed (epoch e shuffles with base + e)."""
  return int(np.random.SeedSequence([seed, 0x524D]).generate_state(1)[0]) & 0x7FFFFFFF


class _Records:
  """The records of ``source`` at ``indices`` (default all), as (index, record) items."""

  def __init__(self, source, indices: Sequence[int] | None):
    n = len(source)
    self.source = source
    self.indices = np.arange(n) if indices is None else np.asarray(indices, np.int64)
    if self.indices.ndim != 1 or (self.indices.size and not (
        0 <= self.indices.min() and self.indices.max() < n)):
      raise ValueError(f"records must be indices in [0, {n}) of the split; got "
                       f"{self.indices.size} value(s) in [{self.indices.min(initial=0)}, "
                       f"{self.indices.max(initial=0)}]")

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int):
    index = int(self.indices[i])
    return index, self.source[index]


class PairPipeline:
  """Pair batches from one split's random-access source (``len`` and ``[i]`` -> record).

  ``shard``: grain ``ShardOptions``; default ``grain.sharding.ShardByJaxProcess(
  drop_remainder=True)`` (this host's share of jax.process_count()). ``records``: read
  only these record indices of the split (an out-of-fold ensemble member's share);
  examples keep their index in the split as "index".
  """

  def __init__(self, source, cfg: PipelineConfig,
               shard: grain.sharding.ShardOptions | None = None,
               records: Sequence[int] | None = None):
    self.cfg = cfg
    self.shard = shard if shard is not None else grain.sharding.ShardByJaxProcess(
        drop_remainder=True)
    chosen = _Records(source, records)
    n, count = len(chosen), self.shard.shard_count
    stop = n - n % count if self.shard.drop_remainder else n
    ds = grain.MapDataset.source(chosen).map(lambda item: pair_example(item[1], item[0], cfg))
    ds = ds[self.shard.shard_index:stop:count]
    if len(ds) == 0:
      raise ValueError(f"shard {self.shard.shard_index} of {count} has no records "
                       f"({n} in the split)")
    self.num_records = len(ds)  # this host's records per epoch
    if cfg.shuffle:
      ds = ds.shuffle(seed=_epoch_seed(cfg.seed))
    ds = ds.repeat(cfg.num_epochs)
    ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
    if cfg.buckets:
      ds = ds.map(lambda batch: bucket_batch(batch, cfg.buckets, cfg.seq_len))
    self.dataset: grain.MapDataset = ds

  def __len__(self) -> int:
    """Batches in all epochs (sys.maxsize // batch_size when repeating forever)."""
    return len(self.dataset)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """The batch at ``step`` (0-based), computed directly."""
    return self.dataset[step]

  def _state_meta(self) -> dict[str, Any]:
    c = self.cfg
    return {"seed": c.seed, "batch_size": c.batch_size, "seq_len": c.seq_len,
            "shuffle": c.shuffle, "shard": [self.shard.shard_index, self.shard.shard_count],
            "num_records": self.num_records}

  def __iter__(self) -> PairIterator:
    opts = grain.ReadOptions(num_threads=self.cfg.read_threads,
                             prefetch_buffer_size=self.cfg.prefetch)
    return PairIterator(iter(self.dataset.to_iter_dataset(opts)), self._state_meta())

  def iterator(self, state: dict | None = None) -> PairIterator:
    """A fresh iterator, set to ``state`` (from ``get_state``) when given."""
    it = iter(self)
    if state is not None:
      it.set_state(state)
    return it


class PairIterator(grain.DatasetIterator):
  """grain's iterator plus a check that a restored state belongs to this pipeline."""

  def __init__(self, parent: grain.DatasetIterator, meta: dict[str, Any]):
    super().__init__(parent)
    self._meta = meta

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return {**self._parent.get_state(), "pipeline": dict(self._meta)}

  def set_state(self, state: dict[str, Any]) -> None:
    saved = state.get("pipeline")
    if saved is not None and saved != self._meta:
      diff = {k: (saved.get(k), v) for k, v in self._meta.items() if saved.get(k) != v}
      raise ValueError(f"iterator state is from another pipeline; (saved, now): {diff}")
    self._parent.set_state({k: v for k, v in state.items() if k != "pipeline"})

  def close(self) -> None:
    self._parent.close()


def eval_batches(source, batch_size: int, seq_len: int, **config) -> Iterator[tuple[dict, int]]:
  """Every record once, in order, unsharded; the last batch is padded by repeating its first
  row. Yields (batch, number of real rows), like ``array_source.padded_batches``."""
  cfg = PipelineConfig(batch_size=batch_size, seq_len=seq_len, shuffle=False, num_epochs=1,
                       drop_remainder=False, **config)
  pipe = PairPipeline(source, cfg, grain.sharding.NoSharding())
  for step in range(len(pipe)):
    batch = pipe.batch(step)
    real = len(batch[schema.MARGIN])
    rows = np.concatenate([np.arange(real), np.zeros(batch_size - real, int)])
    yield {k: v[rows] for k, v in batch.items()}, real
