"""Preference pairs -> a TFDS dataset stored as ArrayRecord, written and read without TensorFlow.

A ``PreferencePairs`` builder holds one named dataset under ``data_dir``
(``data_dir/preference_pairs/<name>/1.0.0/``), one ArrayRecord file set per split, each
record a pair:
  prompt, chosen, rejected  int32 [len]  token ids (the prompt may be empty)
  margin, weight            float32      0 and 1 where the pair had none
  source                    text         "path:line" (PreferencePair.source)
  gold_chosen, gold_rejected float32, flipped bool; subset text  only where the data has them
The caller gives the splits (``split_by_lines`` cuts a file's pairs by line ranges). Records
keep the caller's order (TFDS shuffling is off) and the TFDS example key of a pair is its
``source``, which must be unique; so record i of a split is the i-th pair given, every time.

Text is tokenised at prepare time by ``tokenizer(pairs) -> {"prompt": [[ids]], "chosen":
..., "rejected": ...}`` (one list of ids per pair), called on chunks of pairs; pairs that
already hold token ids (the synthetic task, ``pairs_from_arrays``) need none.

``info.metadata["fingerprint"]`` hashes the pairs, the split assignment and ``tokenizer_id``
(the tokenizer's code is not hashed: name it). Preparing again with the same name reuses the
files when the fingerprint agrees and raises when it does not, saying to delete the folder
or choose another name (``overwrite=True`` rebuilds, for callers that own the folder).
Read back with ``data_sources(data_dir, name)`` (``tfds.builder_from_directory``: no class,
no data, no TensorFlow needed). On several hosts, prepare on one (process 0) and let the
others read after a barrier; TFDS writes to a temporary folder and renames it when done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from rmjax.data import schema
from rmjax.data.readers import read_pairs
from rmjax.data.schema import DataError, PreferencePair

Tokenizer = Callable[[Sequence[PreferencePair]], Mapping[str, Sequence[Sequence[int]]]]
TOKEN_FIELDS = ("prompt", "chosen", "rejected")
OPTIONAL_FLOATS = ("gold_chosen", "gold_rejected")
BUILDER_NAME = "preference_pairs"
DATA_VERSION = "1.0.0"


class PreferencePairs(tfds.core.GeneratorBasedBuilder):
  """One named preference dataset: ``splits`` maps split name -> pairs in record order."""

  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {DATA_VERSION: "prompt/chosen/rejected token ids, margin, weight, source."}
  # TFDS 4.9.10 finds a builder's code_path via `importlib_resources`, a dependency it only
  # declares for Python < 3.9, so builders defined inside a package fail with
  # ModuleNotFoundError on 3.11; naming the file here skips that lookup.
  code_path = epath.Path(__file__)

  def __init__(self, *, data_dir: str | os.PathLike, name: str,
               splits: Mapping[str, Sequence[PreferencePair]], tokenizer: Tokenizer | None = None,
               tokenizer_id: str | None = None, chunk_size: int = 1024, **kwargs):
    self._splits = {s: list(p) for s, p in splits.items()}
    if not self._splits or not all(self._splits.values()):
      raise ValueError(f"dataset {name!r}: every split needs pairs, got sizes "
                       f"{ {s: len(p) for s, p in self._splits.items()} }")
    self._tokenizer, self._chunk_size = tokenizer, chunk_size
    self._keys = _keys(self._splits)
    self._optional = _optional_fields(self._splits)
    self._fingerprint = _fingerprint(self._splits, tokenizer_id)
    super().__init__(data_dir=os.fspath(data_dir), config=tfds.core.BuilderConfig(name=name),
                     file_format=tfds.core.FileFormat.ARRAY_RECORD, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    feats = {f: tfds.features.Tensor(shape=(None,), dtype=np.int32) for f in TOKEN_FIELDS}
    feats.update(margin=tfds.features.Scalar(np.float32), weight=tfds.features.Scalar(np.float32),
                 source=tfds.features.Text())
    for field in self._optional:
      feats[field] = (tfds.features.Text() if field == "subset" else
                      tfds.features.Scalar(np.bool_ if field == "flipped" else np.float32))
    return tfds.core.DatasetInfo(
        builder=self, description="Preference pairs (rmjax.data.tfds_builder).",
        features=tfds.features.FeaturesDict(feats), disable_shuffling=True,
        metadata=tfds.core.MetadataDict(fingerprint=self._fingerprint))

  @property
  def fingerprint(self) -> str:
    return self._fingerprint

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._splits}

  def _generate_examples(self, split: str):
    pairs, keys = self._splits[split], self._keys[split]
    for start in range(0, len(pairs), self._chunk_size):
      chunk = pairs[start:start + self._chunk_size]
      for key, pair, ids in zip(keys[start:], chunk, _token_ids(chunk, self._tokenizer)):
        yield key, self._example(pair, ids)

  def _example(self, pair: PreferencePair, ids: dict) -> dict:
    ex = dict(ids, margin=0.0 if pair.margin is None else pair.margin,
              weight=1.0 if pair.weight is None else pair.weight, source=pair.source)
    for field in self._optional:
      ex[field] = getattr(pair, field)
    return ex


def build(data_dir: str | os.PathLike, name: str, splits: Mapping[str, Sequence[PreferencePair]],
          tokenizer: Tokenizer | None = None, *, tokenizer_id: str | None = None,
          overwrite: bool = False, chunk_size: int = 1024) -> PreferencePairs:
  """Prepares (or reuses) dataset ``name`` under ``data_dir``; returns the builder."""
  if tokenizer is not None and tokenizer_id is None:
    tokenizer_id = getattr(tokenizer, "__qualname__", type(tokenizer).__qualname__)
  builder = PreferencePairs(data_dir=data_dir, name=name, splits=splits, tokenizer=tokenizer,
                            tokenizer_id=tokenizer_id, chunk_size=chunk_size)
  if builder.is_prepared():
    stored = _stored_fingerprint(builder.data_dir)
    if stored == builder.fingerprint:
      return builder
    if not overwrite:
      raise ValueError(f"{builder.data_dir} holds dataset {name!r} prepared from other data "
                       f"(fingerprint {stored}, now {builder.fingerprint}): delete "
                       f"{builder.data_dir} to prepare it again, or give this data another "
                       f"name (rmjax train-rm: --config.data.files.name)")
    shutil.rmtree(builder.data_dir)
    builder = PreferencePairs(data_dir=data_dir, name=name, splits=splits, tokenizer=tokenizer,
                              tokenizer_id=tokenizer_id, chunk_size=chunk_size)
  builder.download_and_prepare()
  return builder


def build_from_files(data_dir, name: str, paths: str | os.PathLike | Iterable,
                     line_ranges: Mapping[str, tuple[int, int | None]], tokenizer=None, *,
                     format: str | None = None, skip_bad_rows: bool = False,
                     **kwargs) -> PreferencePairs:
  """Reads ``paths`` with ``readers.read_pairs``, splits each file by ``line_ranges``
  (see ``split_by_lines``), tokenises and prepares. Files are taken in the given order."""
  paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  pairs = [p for path in paths
           for p in read_pairs(path, format, skip_bad_rows=skip_bad_rows).pairs]
  return build(data_dir, name, split_by_lines(pairs, line_ranges), tokenizer, **kwargs)


def build_from_arrays(data_dir, name: str, arrays_by_split: Mapping[str, Mapping[str, np.ndarray]],
                      **kwargs) -> PreferencePairs:
  """Already tokenised splits (``synthetic.make_split`` layout) -> a prepared dataset."""
  return build(data_dir, name, {s: pairs_from_arrays(a, f"{name}:{s}")
                                for s, a in arrays_by_split.items()}, **kwargs)


def data_sources(data_dir: str | os.PathLike, name: str) -> dict:
  """Split name -> ``tfds.data_sources.ArrayRecordDataSource`` of a prepared dataset."""
  builder = tfds.builder_from_directory(os.path.join(os.fspath(data_dir), BUILDER_NAME, name,
                                                     DATA_VERSION))
  return {split: builder.as_data_source(split=split) for split in builder.info.splits}


def split_by_lines(pairs: Sequence[PreferencePair],
                   ranges: Mapping[str, tuple[int, int | None]]) -> dict[str, list[PreferencePair]]:
  """Split name -> the pairs whose source locator lies in [start, stop) (stop None: no end).

  The locator is the number at the end of ``source``: the 1-based line of a JSONL row, the
  0-based index of a JSON-list or Parquet row ("path:[i]"). Ranges may not overlap; pairs
  outside every range are left out. Order within a split is the order of ``pairs``.
  """
  spans = sorted((start, float("inf") if stop is None else stop, split)
                 for split, (start, stop) in ranges.items())
  for (_, stop, a), (start, _, b) in zip(spans, spans[1:]):
    if start < stop:
      raise ValueError(f"line ranges of splits {a!r} and {b!r} overlap: {dict(ranges)}")
  out = {split: [] for split in ranges}
  for pair in pairs:
    tail = pair.source.rsplit(":", 1)[-1].strip("[]")
    if not tail.isdigit():
      raise DataError(f"{pair.source or '<pair>'}: source has no line number to split by")
    line = int(tail)
    for start, stop, split in spans:
      if start <= line < stop:
        out[split].append(pair)
        break
  return out


def pairs_from_arrays(arrays: Mapping[str, np.ndarray], prefix: str) -> list[PreferencePair]:
  """Joined right-padded sides plus "prompt_len" (``synthetic.make_split``) -> token-id pairs
  with source "<prefix>:<row>". The prompt is read from the chosen side."""
  plen = np.asarray(arrays["prompt_len"])
  ctok, rtok = (np.asarray(arrays[k]) for k in (schema.CHOSEN_TOKENS, schema.REJECTED_TOKENS))
  cmask, rmask = (np.asarray(arrays[k], bool) for k in (schema.CHOSEN_MASK, schema.REJECTED_MASK))
  extra = {f: np.asarray(arrays[k]) for f, k in (
      ("margin", schema.MARGIN), ("weight", schema.WEIGHT), ("gold_chosen", schema.GOLD_CHOSEN),
      ("gold_rejected", schema.GOLD_REJECTED), ("flipped", schema.FLIPPED)) if k in arrays}
  pairs = []
  for i, p in enumerate(plen.tolist()):
    chosen, rejected = ctok[i][cmask[i]].tolist(), rtok[i][rmask[i]].tolist()
    fields = {f: (bool(v[i]) if f == "flipped" else float(v[i])) for f, v in extra.items()}
    pairs.append(PreferencePair(prompt=chosen[:p], chosen=chosen[p:], rejected=rejected[p:],
                                source=f"{prefix}:{i}", **fields))
  return pairs


# ---- helpers ----

def _keys(splits: Mapping[str, list[PreferencePair]]) -> dict[str, list[str]]:
  seen, out = {}, {}
  for split, pairs in splits.items():
    out[split] = []
    for i, pair in enumerate(pairs):
      key = pair.source or f"<{split}>:{i}"
      if key in seen:
        raise DataError(f"{key}: the same source appears twice (splits {seen[key]!r} and "
                        f"{split!r}); example keys must be unique")
      seen[key] = split
      out[split].append(key)
  return out


def _optional_fields(splits) -> tuple[str, ...]:
  """Fields present on any pair; each must then be present on every pair (but subset)."""
  pairs = [p for ps in splits.values() for p in ps]
  fields = [f for f in (*OPTIONAL_FLOATS, "flipped", "subset")
            if any(getattr(p, f) is not None for p in pairs)]
  for field in fields:
    missing = next((p for p in pairs if getattr(p, field) is None), None)
    if missing is not None and field != "subset":
      raise DataError(f"{missing.source or '<pair>'}: field {field!r} is missing while other "
                      f"pairs have it")
  return tuple(fields)


def _fingerprint(splits, tokenizer_id: str | None) -> str:
  digest = hashlib.sha256(json.dumps({"version": DATA_VERSION, "tokenizer": tokenizer_id}).encode())
  for split, pairs in splits.items():
    digest.update(f"\0split {split}\0".encode())
    for p in pairs:
      digest.update(json.dumps([p.source, _plain(p.prompt), _plain(p.chosen), _plain(p.rejected),
                                p.margin, p.weight, p.subset, p.gold_chosen, p.gold_rejected,
                                p.flipped]).encode() + b"\n")
  return digest.hexdigest()[:16]


def _plain(content):
  return content if isinstance(content, str) else [int(t) for t in content]


def _stored_fingerprint(data_dir) -> str | None:
  path = os.path.join(os.fspath(data_dir), "metadata.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("fingerprint")


def _token_ids(pairs: list[PreferencePair], tokenizer: Tokenizer | None) -> list[dict]:
  """One {prompt, chosen, rejected: int32 [len]} per pair, in order."""
  text = [p for p in pairs if any(isinstance(getattr(p, f), str) for f in TOKEN_FIELDS)]
  if text and tokenizer is None:
    raise DataError(f"{text[0].source or '<pair>'}: pair holds text but no tokenizer was given")
  tokenized = {}
  if text:
    out = tokenizer(text)
    for field in TOKEN_FIELDS:
      if field not in out or len(out[field]) != len(text):
        raise ValueError(f"tokenizer must return {len(text)} id lists under each of "
                         f"{TOKEN_FIELDS}; got {field!r}: "
                         f"{len(out[field]) if field in out else 'missing'}")
    tokenized = {id(p): {f: out[f][i] for f in TOKEN_FIELDS} for i, p in enumerate(text)}
  result = []
  for pair in pairs:
    ids = tokenized.get(id(pair)) or {f: getattr(pair, f) for f in TOKEN_FIELDS}
    result.append({f: _int32(ids[f], pair, f) for f in TOKEN_FIELDS})
  return result


def _int32(ids, pair: PreferencePair, field: str) -> np.ndarray:
  arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
  where = pair.source or "<pair>"
  if arr.ndim != 1 or (field != "prompt" and arr.size == 0):
    raise DataError(f"{where}: field {field!r} tokenised to {arr.shape} ids, need a non-empty list")
  if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
    raise DataError(f"{where}: field {field!r} has token ids outside [0, 2**31)")
  return arr.astype(np.int32)
