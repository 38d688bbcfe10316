"""Training batches and eval arrays for reward-model training, from the configured source.

  * "synthetic": the synthetic gold-reward task, in memory (``ArraySource``).
  * "files": preference files (any format ``readers.read_pairs`` knows), tokenised with a
    local tokenizer, prepared once as a TFDS ArrayRecord dataset split by source line,
    and read through the grain pipeline (``PairPipeline``).
Both give ``batch(step)``, a pure function of the step, so the data position in a
checkpoint is the step itself. For an ensemble (``rmjax.rm.members``) the batch is
still a pure function of the step: separate members each read their own order of the
same pairs (``MemberBatches``, [K, B, ...] from (member seed, step)); a shared
backbone's heads read one batch with per-head bootstrap weights (``HeadBootstrap``,
from (seed, head, step)).
"""

from __future__ import annotations

import dataclasses
import hashlib

import grain
import jax
import numpy as np

from rmjax.data import pipeline, schema, shared_prompt, tfds_builder, tokenize
from rmjax.data.array_source import ArraySource
from rmjax.rm import members as ensemble
from rmjax.rm import strength
from rmjax.rm.step import HEAD_WEIGHT
from rmjax.tasks import confidence
from rmjax.tasks import preference as synthetic

TRAIN_KEYS = (schema.CHOSEN_TOKENS, schema.CHOSEN_MASK, schema.REJECTED_TOKENS,
              schema.REJECTED_MASK, schema.MARGIN, schema.WEIGHT, "prompt_len")
SOURCES = ("synthetic", "files")


@dataclasses.dataclass
class RMData:
  train: object  # .batch(step) -> TRAIN_KEYS arrays (packed, per member: see ``load``)
  eval: dict[str, np.ndarray]  # TRAIN_KEYS and, for synthetic data, gold rewards and flags
  packed_width: int  # row width that holds every pair packed with a shared prompt
  vocab_size: int  # of the data's token ids
  data_hash: str
  num_train_pairs: int
  # True when each process's train batches hold only its own rows (``parallel.shard_batch``)
  process_local: bool = False


def arrays_hash(*splits: dict[str, np.ndarray]) -> str:
  digest = hashlib.sha256()
  for arrays in splits:
    for key in sorted(arrays):
      digest.update(key.encode())
      digest.update(np.ascontiguousarray(arrays[key]).tobytes())
  return digest.hexdigest()[:16]


class Packed:
  """A source's batches packed with a shared prompt (``shared_prompt.pack``), ``width``
  wide, or with ``bucket`` each batch only as wide as its longest pair rounded up to 64
  (``shared_prompt.bucket_width``; the step compiles once per bucket)."""

  def __init__(self, source, width: int, bucket: bool = False):
    self.source, self.width, self.bucket = source, width, bucket

  def batch(self, step: int) -> dict[str, np.ndarray]:
    batch = self.source.batch(step)
    width = shared_prompt.bucket_width(batch, self.width) if self.bucket else self.width
    return shared_prompt.pack(batch, width)


class MemberBatches:
  """Separate ensemble members' batches, stacked: ``batch(step)`` -> [K, B, ...], member
  m's rows from ``sources[m]`` (the same pairs in that member's own seeded order)."""

  def __init__(self, sources: list):
    self.sources = sources

  def batch(self, step: int) -> dict[str, np.ndarray]:
    parts = [source.batch(step) for source in self.sources]
    return {k: np.stack([p[k] for p in parts]) for k in parts[0]}


class HeadBootstrap:
  """A shared-backbone ensemble's batches: the source's batch plus "head_weight"
  float32 [B, K], head h's Poisson(1) weight of each pair at ``step``, drawn from
  (seed, h, step) so that a resumed run draws the same (the online bootstrap of
  ``rmjax.rm.members``)."""

  def __init__(self, source, k: int, seed: int):
    self.source, self.k, self.seed = source, k, seed

  def batch(self, step: int) -> dict[str, np.ndarray]:
    out = dict(self.source.batch(step))
    rows = len(out[schema.WEIGHT])
    draws = [np.random.default_rng([self.seed, head, step, 0xB007]).poisson(1.0, rows)
             for head in range(self.k)]
    out[HEAD_WEIGHT] = np.stack(draws, axis=1).astype(np.float32)
    return out


def _synthetic(cfg, batch_size: int, seeds: list[int], records) -> RMData:
  fields = {f.name for f in dataclasses.fields(synthetic.SyntheticConfig)}
  unknown = set(cfg.synthetic.keys()) - fields
  if unknown:
    raise ValueError(f"data.synthetic has unknown fields {sorted(unknown)}")
  scfg = synthetic.from_fields(cfg.synthetic.to_dict())
  train = synthetic.make_split(scfg, "train")
  evaluation = synthetic.make_split(scfg, "eval")
  if cfg.get("calibration_pairs"):  # PPO-M: the split's pairs, then their restatements
    extra = confidence.calibration_pairs(synthetic.build_task(scfg), train,
                                         len(train[schema.WEIGHT]))
    train = {k: np.concatenate([train[k], extra[k]]) for k in TRAIN_KEYS}
  train = {k: train[k] for k in TRAIN_KEYS}
  data_hash = arrays_hash(train, evaluation)
  num_pairs = len(train[schema.WEIGHT])
  train[strength.INDEX] = np.arange(num_pairs, dtype=np.int32)
  sources = []
  for seed, member_records in zip(seeds, records(num_pairs)):
    rows = train if member_records is None else {k: v[member_records] for k, v in train.items()}
    sources.append(ArraySource(rows, batch_size, seed=seed))
  return RMData(train=sources, eval=evaluation, packed_width=shared_prompt.packed_width(train),
                vocab_size=scfg.vocab_size, data_hash=data_hash, num_train_pairs=num_pairs)


def _files(cfg, batch_size: int, seeds: list[int], records) -> RMData:
  f = cfg.files
  tokenizer = tokenize.load_tokenizer(f.tokenizer)
  encode = lambda pairs: tokenize.encode_parts(pairs, tokenizer)
  ranges = {"train": tuple(f.train_lines), "eval": tuple(f.eval_lines)}
  builder = tfds_builder.build_from_files(
      f.data_dir, f.name, list(f.paths), ranges, encode, format=f.format or None,
      skip_bad_rows=f.skip_bad_rows, tokenizer_id=str(f.tokenizer))
  sources = tfds_builder.data_sources(f.data_dir, f.name)
  options = dict(seq_len=f.seq_len, max_response_len=f.max_response_len,
                 keep_prompt_start=len(tokenize.special_prefix(tokenizer)))
  num_pairs = len(sources["train"])
  # Several processes: each reads its own share of the records, batch_size / processes
  # rows a step; separate members' stacked batches are read whole by every process.
  processes = jax.process_count()
  local = processes > 1 and len(seeds) == 1
  if local and batch_size % processes:
    raise ValueError(f"train.batch_size={batch_size} is not divisible by the "
                     f"{processes} processes that each read their share of it")
  shard = None if local else grain.sharding.NoSharding()
  train = [pipeline.PairPipeline(sources["train"], pipeline.PipelineConfig(
      batch_size=batch_size // processes if local else batch_size, seed=seed, **options),
      shard=shard, records=member_records)
      for seed, member_records in zip(seeds, records(num_pairs))]
  parts = [(batch, real) for batch, real in pipeline.eval_batches(sources["eval"], batch_size,
                                                                   **options)]
  evaluation = {k: np.concatenate([b[k][:real] for b, real in parts]) for k in TRAIN_KEYS}
  return RMData(train=train, eval=evaluation,
                packed_width=shared_prompt.truncated_width(f.seq_len, f.max_response_len),
                vocab_size=len(tokenizer), data_hash=builder.fingerprint,
                num_train_pairs=num_pairs, process_local=local)


def load(cfg, batch_size: int, seed: int, layout: ensemble.Layout = ensemble.SINGLE,
         pack_prompt: bool = False) -> RMData:
  """``cfg.source``: "synthetic" (``cfg.synthetic``: SyntheticConfig fields) or "files"
  (``cfg.files``: paths, format, tokenizer, line ranges, seq_len, data_dir, name).

  ``train.batch(step)`` gives [B, ...] arrays in the order of ``seed``; for separate
  ensemble members [K, B, ...], member m in the order of its seed
  (``ensemble.member_seeds``) and, with ``layout.folds``, from its training folds only
  (``strength.training_records``); for a shared backbone with ``layout.bootstrap``, plus
  "head_weight" [B, K]. ``cfg.strength.path``: the batches carry the strength options
  (``strength.StrengthBatches``). ``pack_prompt``: packed with a shared prompt.
  """
  if cfg.source not in SOURCES:
    raise ValueError(f"data.source={cfg.source!r} is not one of {SOURCES}")
  if cfg.get("calibration_pairs") and cfg.source != "synthetic":
    raise ValueError("data.calibration_pairs restates the confidence the synthetic task's "
                     "responses state; data.source='files' has no stated confidence")
  seeds = ensemble.member_seeds(seed, layout.k) if layout.stacked else [seed]

  def records(num_pairs: int) -> list:
    if not layout.folds:
      return [None] * len(seeds)
    return [strength.training_records(num_pairs, layout.folds, seed, m)
            for m in range(len(seeds))]

  data = (_synthetic if cfg.source == "synthetic" else _files)(cfg, batch_size, seeds, records)
  sources = data.train
  options = strength_options(cfg.get("strength"), data)
  if options is not None:
    sources = [strength.StrengthBatches(s, options) for s in sources]
  # Separate members' batches are stacked, so they share one width; so do processes'
  # batches that form one global batch.
  bucket = not layout.stacked and not data.process_local
  sources = [Packed(s, data.packed_width, bucket=bucket) if pack_prompt else s
             for s in sources]
  if layout.stacked:
    train = MemberBatches(sources)
  elif layout.k > 1 and layout.bootstrap:
    train = HeadBootstrap(sources[0], layout.k, seed)
  else:
    train = sources[0]
  return dataclasses.replace(data, train=train)


def strength_options(cfg, data: RMData) -> strength.StrengthOptions | None:
  """The ``data.strength`` options for ``data``'s training pairs, or None when off."""
  if cfg is None or not cfg.path:
    if cfg is not None and (cfg.flip_fraction or cfg.smoothing or cfg.adaptive_margin):
      raise ValueError("data.strength options are set but data.strength.path is empty; "
                       "write a strength file with rmjax score-pairs")
    return None
  scored = strength.load(cfg.path, data.data_hash, data.num_train_pairs)
  return strength.StrengthOptions.from_config(cfg, scored.mu)


def train_pairs(cfg, batch_size: int = 256) -> dict[str, np.ndarray]:
  """Every training pair of ``cfg`` in split order (what ``rmjax score-pairs`` scores):
  the TRAIN_KEYS arrays, plus gold rewards and flip flags where the data has them."""
  if cfg.source == "synthetic":
    scfg = synthetic.from_fields(cfg.synthetic.to_dict())
    return synthetic.make_split(scfg, "train")
  f = cfg.files
  tokenizer = tokenize.load_tokenizer(f.tokenizer)
  sources = tfds_builder.data_sources(f.data_dir, f.name)
  options = dict(seq_len=f.seq_len, max_response_len=f.max_response_len,
                 keep_prompt_start=len(tokenize.special_prefix(tokenizer)))
  parts = list(pipeline.eval_batches(sources["train"], batch_size, **options))
  return {k: np.concatenate([b[k][:real] for b, real in parts]) for k in parts[0][0]}
