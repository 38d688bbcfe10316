"""Preference files on disk -> ``PreferencePair`` lists; every bad row is named by file and line.

Formats (``format=``, or detected from the first row's fields); ``.gz`` is read transparently:
  "hh-rlhf"  JSONL {chosen, rejected}: transcripts split at the last "\\n\\nAssistant:"
             (hh_rlhf.py).
  "pairs"    {prompt, chosen, rejected[, margin, weight]}: JSONL, JSON list or Parquet; text
             or token-id lists.
  "llmbar"   JSON list {input, output_1, output_2, label}; label 1/2 (int or str) is chosen.
  "pandalm"  JSON list {instruction, input, response1, response2, annotator1..3} (0 = tie);
             majority vote; ties and no-majority rows are counted in ``dropped_ties``.

A pair's ``source`` is "path:line" (JSONL, 1-based) or "path:[i]" (JSON list, Parquet; 0-based).
A malformed row (bad JSON, missing field, wrong type, empty or whitespace-only response,
non-UTF-8 bytes, bad label) raises DataError starting with that location (plus "(line L)"
where a JSON-list element starts) and naming the field; ``skip_bad_rows=True`` records it in
``skipped`` instead, and the load reports how many rows it skipped and the first few
reasons (``ReadResult.summary``), as it does pairs whose chosen equals rejected. Rows are
validated before votes are counted, and a JSON list whose structure is broken always
raises: it cannot be read past the break.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rmjax.data.hh_rlhf import split_transcripts
from rmjax.data.schema import DataError, PreferencePair

FORMATS = ("hh-rlhf", "pairs", "llmbar", "pandalm")
REPORT_FIRST = 3  # locations a load report names
LLMBAR_SUBSETS = {  # RewardBench subset name -> folder under llmbar/Dataset/LLMBar
    "llmbar-natural": "Natural",
    "llmbar-adver-neighbor": "Adversarial/Neighbor",
    "llmbar-adver-GPTInst": "Adversarial/GPTInst",
    "llmbar-adver-GPTOut": "Adversarial/GPTOut",
    "llmbar-adver-manual": "Adversarial/Manual",
}


@dataclasses.dataclass
class ReadResult:
  path: str
  format: str
  pairs: list[PreferencePair]
  skipped: list[str] = dataclasses.field(default_factory=list)  # "where: reason", one per row
  dropped_ties: int = 0  # pandalm only: ties and votes without a majority
  identical: list[str] = dataclasses.field(default_factory=list)  # sources, chosen == rejected

  def summary(self, first: int = REPORT_FIRST) -> str:
    """What was dropped or looks wrong, one line each ("" when nothing): the rows
    ``skip_bad_rows`` skipped and the pairs whose chosen equals rejected (kept; they carry
    no preference), each with a count and the first ``first`` locations."""
    lines = []
    if self.skipped:
      lines.append(f"{self.path}: skipped {_count(self.skipped, 'bad row')} (skip_bad_rows): "
                   + _first(self.skipped, first, "; "))
    if self.identical:
      lines.append(f"{self.path}: {_count(self.identical, 'pair')} with chosen == rejected "
                   f"(kept, no preference to learn): " + _first(self.identical, first, ", "))
    return "\n".join(lines)


def _count(items, what: str) -> str:
  return f"{len(items)} {what}{'' if len(items) == 1 else 's'}"


def _first(items, first: int, sep: str) -> str:
  return sep.join(items[:first]) + (f"{sep}..." if len(items) > first else "")


class _RowError(Exception):
  """A malformed row; the reader adds where it is."""


def read_pairs(path: str | os.PathLike, format: str | None = None, *, skip_bad_rows: bool = False,
               subset: str | None = None, report: bool = True) -> ReadResult:
  """Reads every row of ``path``; ``subset`` is copied into each pair (e.g. "llmbar-natural").

  ``report``: print ``ReadResult.summary()`` (skipped rows, chosen == rejected pairs) to
  stderr once, on the primary process, when it has anything to say.
  """
  if format is not None and format not in FORMATS:
    raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
  name = os.fspath(path)
  records = list(read_records(name))
  if not records:
    raise DataError(f"{name}: the file has no rows")
  fmt = format or _detect(name, records)
  convert = _CONVERTERS[fmt]
  result = ReadResult(path=name, format=fmt, pairs=[])
  for source, where, row in records:
    try:
      if isinstance(row, _RowError):
        raise row
      if not isinstance(row, dict):
        raise _RowError(f"row must be a JSON object, got {_type(row)}")
      fields = convert(row)
    except _RowError as e:
      if not skip_bad_rows:
        raise DataError(f"{where}: {e}") from None
      result.skipped.append(f"{where}: {e}")
      continue
    if fields is None:
      result.dropped_ties += 1
      continue
    result.pairs.append(PreferencePair(**fields, source=source, subset=subset))
    if _same(fields["chosen"], fields["rejected"]):
      result.identical.append(source)
  if report:
    _print_report(result.summary())
  return result


def _same(a, b) -> bool:
  return (a == b) if isinstance(a, str) == isinstance(b, str) else False


def _print_report(text: str) -> None:
  if not text:
    return
  from rmjax.parallel.distributed import is_primary  # pylint: disable=import-outside-toplevel

  if is_primary():
    print(text, file=sys.stderr)


def shared_data_dir() -> Path | None:
  """The data folder ``$RMJAX_SHARED_DATA`` names (real preference sets, checkpoints);
  None when it is unset or not a folder."""
  env = os.environ.get("RMJAX_SHARED_DATA")
  folder = Path(env) if env else None
  return folder if folder is not None and folder.is_dir() else None


def llmbar_subsets(root: str | os.PathLike | None = None) -> dict[str, Path]:
  """RewardBench subset name -> LLMBar ``dataset.json``.

  ``root`` is a data folder holding ``llmbar/`` (default ``shared_data_dir()``), the LLMBar
  checkout, or its ``Dataset/LLMBar`` folder. Raises FileNotFoundError naming what is missing.
  """
  if root is None:
    root = shared_data_dir()
    if root is None:
      raise FileNotFoundError("no data folder: set RMJAX_SHARED_DATA or name the LLMBar folder")
  root = Path(root)
  for base in (root / "llmbar" / "Dataset" / "LLMBar", root / "Dataset" / "LLMBar", root):
    if (base / "Natural").is_dir():
      break
  else:
    raise FileNotFoundError(f"no LLMBar data under {root} (looked for llmbar/Dataset/LLMBar)")
  files = {name: base / folder / "dataset.json" for name, folder in LLMBAR_SUBSETS.items()}
  missing = [str(p) for p in files.values() if not p.is_file()]
  if missing:
    raise FileNotFoundError(f"LLMBar files missing: {', '.join(missing)}")
  return files


# ---- containers: yield (source, where, parsed row or _RowError) ----

_WS = re.compile(r"[ \t\n\r]*")


def read_records(name: str) -> Iterator[tuple[str, str, Any]]:
  """(source, where, value) of every record of a JSONL, JSON-list or Parquet file (gzip
  allowed), in file order: ``source`` names the record ("file:line", "file:[i]"),
  ``where`` is how an error message points at it (a JSON list adds its line); a record that
  does not parse comes with its error as the value, for the caller to report or skip."""
  raw = Path(name).read_bytes()
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
      raise DataError(f"{name}: not a readable gzip file ({e})") from None
  if raw[:4] == b"PAR1":
    return _parquet_records(name, raw)
  if raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"[":
    return _json_list_records(name, raw)
  return _jsonl_records(name, raw)


def _jsonl_records(name: str, raw: bytes):
  for line_no, line in enumerate(raw.split(b"\n"), 1):
    if not line.strip():
      continue
    where = f"{name}:{line_no}"
    try:
      text = line.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError as e:
      yield where, where, _RowError(f"not valid UTF-8 (byte 0x{line[e.start]:02x} at column "
                                    f"{e.start + 1})")
      continue
    try:
      yield where, where, json.loads(text)
    except json.JSONDecodeError as e:
      yield where, where, _RowError(f"bad JSON: {e.msg} at column {e.colno}")


def _json_list_records(name: str, raw: bytes):
  # Undecodable bytes become lone surrogates, caught per field (_text), so the row is named.
  text = raw.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
  decoder, at, index, line, counted = json.JSONDecoder(), 0, 0, 1, 0

  def fail(what: str, pos: int):
    line_at = text.count("\n", 0, pos) + 1
    raise DataError(f"{name}:[{index}] (line {line_at}): bad JSON: {what}; the list cannot "
                    f"be read past it")

  at = _WS.match(text, at).end() + 1  # past "["
  at = _WS.match(text, at).end()
  if text[at:at + 1] == "]":
    return
  while True:
    line += text.count("\n", counted, at)
    counted = at
    try:
      row, end = decoder.raw_decode(text, at)
    except json.JSONDecodeError as e:
      fail(f"{e.msg} at column {e.colno}", e.pos)
    yield f"{name}:[{index}]", f"{name}:[{index}] (line {line})", row
    at = _WS.match(text, end).end()
    if text[at:at + 1] == "]":
      if text[at + 1:].strip():
        fail("extra data after the closing ']'", at + 1)
      return
    if text[at:at + 1] != ",":
      fail("expected ',' or ']' after the element", at)
    index += 1
    at = _WS.match(text, at + 1).end()


def _parquet_records(name: str, raw: bytes):
  import pyarrow.parquet as pq  # only Parquet needs pyarrow

  try:
    rows = pq.read_table(io.BytesIO(raw)).to_pylist()
  except Exception as e:  # pyarrow raises several types for a damaged file
    raise DataError(f"{name}: not a readable Parquet file ({e})") from None
  for index, row in enumerate(rows):
    yield f"{name}:[{index}]", f"{name}:[{index}]", row


def _detect(name: str, records) -> str:
  rows = [row for _, _, row in records if isinstance(row, dict)]
  if not rows:
    raise DataError(f"{name}: cannot tell the format, no row is a JSON object (first: "
                    f"{records[0][1]}: {records[0][2]}); pass format= one of {FORMATS}")
  keys = rows[0].keys()
  for fmt, needed in (("pairs", {"prompt", "chosen", "rejected"}),
                      ("llmbar", {"output_1", "output_2"}),
                      ("pandalm", {"response1", "response2"}),
                      ("hh-rlhf", {"chosen", "rejected"})):
    if needed <= keys:
      return fmt
  raise DataError(f"{name}: cannot tell the format from the first row's fields "
                  f"{sorted(keys)}; pass format= one of {FORMATS}")


# ---- fields ----

def _type(value) -> str:
  return "null" if value is None else type(value).__name__


def _get(row: dict, field: str):
  if field not in row:
    raise _RowError(f"missing field {field!r}")
  return row[field]


def _text(row: dict, field: str, *, empty_ok: bool = False) -> str:
  value = _get(row, field)
  if not isinstance(value, str):
    raise _RowError(f"field {field!r} must be text, got {_type(value)}")
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    char = ord(value[e.start])
    what = f"byte 0x{char - 0xdc00:02x}" if 0xdc80 <= char <= 0xdcff else "a lone surrogate"
    raise _RowError(f"field {field!r} is not valid UTF-8 ({what} at character {e.start})") from None
  if not empty_ok and not value.strip():
    raise _RowError(f"field {field!r} is empty")
  return value


def _content(row: dict, field: str, *, empty_ok: bool = False):
  value = _get(row, field)
  if not isinstance(value, list):
    return _text(row, field, empty_ok=empty_ok)
  if not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
    raise _RowError(f"field {field!r} must be text or a list of token ids")
  if not empty_ok and not value:
    raise _RowError(f"field {field!r} is empty")
  return value


def _number(row: dict, field: str, *, minimum: float | None = None) -> float | None:
  value = row.get(field)
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise _RowError(f"field {field!r} must be a finite number, got {value!r}")
  if minimum is not None and value < minimum:
    raise _RowError(f"field {field!r} must be >= {minimum}, got {value}")
  return float(value)


def _choice(row: dict, field: str, allowed: tuple[int, ...]) -> int:
  value = _get(row, field)
  if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
    value = int(value.strip())
  if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
    raise _RowError(f"field {field!r} must be one of {', '.join(map(str, allowed))} "
                    f"(number or string), got {row[field]!r}")
  return value


# ---- formats: row -> PreferencePair fields, or None for a dropped tie ----

def _hh_rlhf(row: dict) -> dict:
  chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
  try:
    prompt, chosen, rejected = split_transcripts(chosen, rejected)
  except ValueError as e:
    raise _RowError(str(e)) from None
  for field, response in (("chosen", chosen), ("rejected", rejected)):
    if not response.strip():
      raise _RowError(f"field {field!r} has an empty response after the last '\\n\\nAssistant:'")
  return dict(prompt=prompt, chosen=chosen, rejected=rejected)


def _pairs(row: dict) -> dict:
  fields = dict(prompt=_content(row, "prompt", empty_ok=True), chosen=_content(row, "chosen"),
                rejected=_content(row, "rejected"))
  if isinstance(fields["chosen"], str) != isinstance(fields["rejected"], str):
    raise _RowError("fields 'chosen' and 'rejected' must both be text or both token ids")
  return dict(fields, margin=_number(row, "margin"), weight=_number(row, "weight", minimum=0))


def _llmbar(row: dict) -> dict:
  prompt = _text(row, "input", empty_ok=True)
  outputs = {1: _text(row, "output_1"), 2: _text(row, "output_2")}
  label = _choice(row, "label", (1, 2))
  return dict(prompt=prompt, chosen=outputs[label], rejected=outputs[3 - label])


def _pandalm(row: dict) -> dict | None:
  instruction, extra = _text(row, "instruction", empty_ok=True), _text(row, "input", empty_ok=True)
  responses = {1: _text(row, "response1"), 2: _text(row, "response2")}
  votes = [_choice(row, f"annotator{k}", (0, 1, 2)) for k in (1, 2, 3)]
  winner = next((c for c in (1, 2) if votes.count(c) >= 2), None)
  if winner is None:
    return None
  prompt = instruction + ("\n\n" + extra if extra.strip() else "")
  return dict(prompt=prompt, chosen=responses[winner], rejected=responses[3 - winner])


_CONVERTERS: dict[str, Callable[[dict], dict | None]] = {
    "hh-rlhf": _hh_rlhf, "pairs": _pairs, "llmbar": _llmbar, "pandalm": _pandalm}
