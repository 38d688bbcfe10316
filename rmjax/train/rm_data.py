"""Training batches and eval arrays for reward-model training, from the configured source.

  * "synthetic": the synthetic gold-reward task, in memory (``ArraySource``).
  * "files": preference files (any format ``readers.read_pairs`` knows), tokenised with a
    local tokenizer, prepared once as a TFDS ArrayRecord dataset split by source line,
    and read through the grain pipeline (``PairPipeline``).
Both give ``batch(step)``, a pure function of the step, so the data position in a
checkpoint is the step itself.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from rmjax.data import pipeline, schema, shared_prompt, synthetic, tfds_builder, tokenize
from rmjax.data.array_source import ArraySource

TRAIN_KEYS = (schema.CHOSEN_TOKENS, schema.CHOSEN_MASK, schema.REJECTED_TOKENS,
              schema.REJECTED_MASK, schema.MARGIN, schema.WEIGHT, "prompt_len")
SOURCES = ("synthetic", "files")


@dataclasses.dataclass
class RMData:
  train: ArraySource | pipeline.PairPipeline  # .batch(step) -> TRAIN_KEYS arrays
  eval: dict[str, np.ndarray]  # TRAIN_KEYS and, for synthetic data, gold rewards and flags
  packed_width: int  # row width that holds every pair packed with a shared prompt
  vocab_size: int  # of the data's token ids
  data_hash: str


def arrays_hash(*splits: dict[str, np.ndarray]) -> str:
  digest = hashlib.sha256()
  for arrays in splits:
    for key in sorted(arrays):
      digest.update(key.encode())
      digest.update(np.ascontiguousarray(arrays[key]).tobytes())
  return digest.hexdigest()[:16]


def _synthetic(cfg, batch_size: int, seed: int) -> RMData:
  fields = {f.name for f in dataclasses.fields(synthetic.SyntheticConfig)}
  unknown = set(cfg.synthetic.keys()) - fields
  if unknown:
    raise ValueError(f"data.synthetic has unknown fields {sorted(unknown)}")
  scfg = synthetic.SyntheticConfig(**cfg.synthetic.to_dict())
  train = synthetic.make_split(scfg, "train")
  evaluation = synthetic.make_split(scfg, "eval")
  train = {k: train[k] for k in TRAIN_KEYS}
  return RMData(train=ArraySource(train, batch_size, seed=seed), eval=evaluation,
                packed_width=shared_prompt.packed_width(train), vocab_size=scfg.vocab_size,
                data_hash=arrays_hash(train, evaluation))


def _files(cfg, batch_size: int, seed: int) -> RMData:
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
  train = pipeline.PairPipeline(sources["train"], pipeline.PipelineConfig(
      batch_size=batch_size, seed=seed, **options))
  parts = [(batch, real) for batch, real in pipeline.eval_batches(sources["eval"], batch_size,
                                                                   **options)]
  evaluation = {k: np.concatenate([b[k][:real] for b, real in parts]) for k in TRAIN_KEYS}
  return RMData(train=train, eval=evaluation,
                packed_width=shared_prompt.truncated_width(f.seq_len, f.max_response_len),
                vocab_size=len(tokenizer), data_hash=builder.fingerprint)


def load(cfg, batch_size: int, seed: int) -> RMData:
  """``cfg.source``: "synthetic" (``cfg.synthetic``: SyntheticConfig fields) or "files"
  (``cfg.files``: paths, format, tokenizer, line ranges, seq_len, data_dir, name)."""
  if cfg.source not in SOURCES:
    raise ValueError(f"data.source={cfg.source!r} is not one of {SOURCES}")
  return (_synthetic if cfg.source == "synthetic" else _files)(cfg, batch_size, seed)
