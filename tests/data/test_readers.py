"""Readers on the real shared files (skipped when absent) and on small malformed files."""

import gzip
import json
import re
from pathlib import Path

import pytest

from rmjax.data import readers
from rmjax.data.hh_rlhf import split_transcripts
from rmjax.data.readers import llmbar_subsets, read_pairs, shared_data_dir
from rmjax.data.schema import DataError

# The real data sets: $RMJAX_SHARED_DATA, else the team's folder beside the repository.
_BESIDE = Path(__file__).resolve().parents[3] / "shared" / "data"
SHARED = shared_data_dir() or (_BESIDE if _BESIDE.is_dir() else None)
needs_shared = pytest.mark.skipif(
    SHARED is None, reason="real data absent (set RMJAX_SHARED_DATA or ../shared/data)")


def _line(source: str) -> int:
  return int(source.rsplit(":", 1)[1])


# ---- real files ----

@needs_shared
def test_hh_rlhf_harmless_test_split():
  path = SHARED / "hh-rlhf/harmless-base/test.jsonl.gz"
  with gzip.open(path, "rt", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 2312
  result = read_pairs(path, skip_bad_rows=True)
  assert result.format == "hh-rlhf"
  # 5 rows whose transcripts do not share a prompt, 4 whose chosen reply is only a space.
  bad = {87: "empty response", 517: "empty response", 926: "empty response",
         1104: "empty response", 1255: "do not share", 1689: "do not share",
         1951: "do not share", 1953: "do not share", 2037: "do not share"}
  assert len(result.pairs) == 2303 and len(result.skipped) == 9
  for message, (line, reason) in zip(result.skipped, sorted(bad.items())):
    assert message.startswith(f"{path}:{line}: ") and reason in message
  for pair in result.pairs:
    line = _line(pair.source)
    assert pair.source == f"{path}:{line}" and line not in bad
    assert pair.prompt.endswith("\n\nAssistant:") and "\n\nAssistant:" not in pair.chosen
    assert pair.prompt + pair.chosen == rows[line - 1]["chosen"]
    assert pair.prompt + pair.rejected == rows[line - 1]["rejected"]
  train = [p for p in result.pairs if _line(p.source) <= 2000]
  assert len(train) == 1992 and len(result.pairs) - len(train) == 311  # lines 1-2000 / 2001-2312
  with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:87: field 'chosen' has an empty"):
    read_pairs(path)


@needs_shared
def test_llmbar_subsets_counts_and_labels():
  expected = {"llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
              "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46}
  files = llmbar_subsets(SHARED)
  assert list(files) == list(expected)
  assert files == llmbar_subsets(SHARED / "llmbar")
  for name, path in files.items():
    result = read_pairs(path, subset=name)
    assert result.format == "llmbar" and not result.skipped
    assert len(result.pairs) == expected[name]
    raw = json.loads(path.read_text(encoding="utf-8"))
    for i, (pair, row) in enumerate(zip(result.pairs, raw)):
      label = int(row["label"])
      assert pair.source == f"{path}:[{i}]" and pair.subset == name
      assert (pair.prompt, pair.chosen, pair.rejected) == (
          row["input"], row[f"output_{label}"], row[f"output_{3 - label}"])


@needs_shared
def test_llmbar_processed_sets():
  counts = {"MT-Bench": (200, 0), "FairEval": (66, 0), "LLMEval2": (199, 1)}
  for name, (kept, skipped) in counts.items():
    path = SHARED / "llmbar/Dataset/Processed" / name / "dataset.json"
    result = read_pairs(path, skip_bad_rows=True)
    assert (len(result.pairs), len(result.skipped)) == (kept, skipped)
  # LLMEval2 element 169 has a whitespace-only output_2; it starts on line 1016.
  assert result.skipped == [f"{path}:[169] (line 1016): field 'output_2' is empty"]


@needs_shared
def test_pandalm_majority_vote_and_ties():
  path = SHARED / "pandalm/data/testset-v1.json"
  raw = json.loads(path.read_text(encoding="utf-8"))
  assert len(raw) == 999
  with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:\[18\] \(line 218\): field "
                                      r"'response1' is empty$"):
    read_pairs(path)
  result = read_pairs(path, skip_bad_rows=True)
  assert result.format == "pandalm"
  # 999 = 836 kept + 103 ties/no majority + 60 malformed (54 empty, 6 boolean responses).
  assert (len(result.pairs), result.dropped_ties, len(result.skipped)) == (836, 103, 60)
  assert sum("is empty" in m for m in result.skipped) == 54
  assert sum("must be text, got bool" in m for m in result.skipped) == 6
  for pair in result.pairs:
    row = raw[int(pair.source.rsplit("[", 1)[1].rstrip("]"))]
    votes = [row[f"annotator{k}"] for k in (1, 2, 3)]
    winner = 1 if votes.count(1) >= 2 else 2
    assert votes.count(winner) >= 2
    assert (pair.chosen, pair.rejected) == (row[f"response{winner}"], row[f"response{3 - winner}"])
    assert pair.prompt == row["instruction"] + ("\n\n" + row["input"] if row["input"] else "")


# ---- malformed files ----

def _jsonl(path, lines):
  path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
  return path


def _dump(row):
  return json.dumps(row)


GOOD = {"prompt": "p", "chosen": "good", "rejected": "bad"}


@pytest.mark.parametrize("row, line, message", [
    ('{"prompt": "p", "chosen": "a", ', 2, "bad JSON"),
    (_dump({"prompt": "p", "chosen": "a"}), 2, "missing field 'rejected'"),
    (_dump({"prompt": "p", "chosen": "  ", "rejected": "b"}), 2, "field 'chosen' is empty"),
    (_dump({"prompt": "p", "chosen": 5, "rejected": "b"}), 2,
     "field 'chosen' must be text, got int"),
    (_dump({**GOOD, "weight": -1}), 2, "field 'weight' must be >= 0"),
    (_dump({**GOOD, "margin": "big"}), 2, "field 'margin' must be a finite number"),
    (b'{"prompt": "p", "chosen": "caf\xe9", "rejected": "b"}', 2, "not valid UTF-8 (byte 0xe9"),
    ('[1, 2]', 2, "row must be a JSON object, got list"),
])
def test_pairs_jsonl_errors_name_file_and_line(tmp_path, row, line, message):
  path = _jsonl(tmp_path / "x.jsonl", [_dump(GOOD), row, _dump(GOOD)])
  with pytest.raises(DataError) as e:
    read_pairs(path, "pairs")
  assert str(e.value).startswith(f"{path}:{line}: ") and message in str(e.value)
  result = read_pairs(path, "pairs", skip_bad_rows=True)
  assert [p.source for p in result.pairs] == [f"{path}:1", f"{path}:3"]
  assert len(result.skipped) == 1 and result.skipped[0] == str(e.value)


def test_hh_rlhf_errors_and_gzip(tmp_path):
  ok = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"}
  rows = [ok, {"chosen": ok["chosen"], "rejected": "\n\nHuman: yo\n\nAssistant: go"},
          {"chosen": ok["chosen"], "rejected": "\n\nHuman: hi\n\nAssistant:"},
          {"chosen": "no turns", "rejected": ok["rejected"]}]
  path = tmp_path / "hh.jsonl.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\n".join(map(_dump, rows)) + "\n\n")  # a blank line is not a row
  result = read_pairs(path, skip_bad_rows=True)
  assert result.format == "hh-rlhf" and len(result.pairs) == 1
  assert result.pairs[0].prompt == "\n\nHuman: hi\n\nAssistant:"
  assert result.pairs[0].chosen == " hello" and result.pairs[0].source == f"{path}:1"
  assert [m.split(": ", 1)[0] for m in result.skipped] == [f"{path}:{i}" for i in (2, 3, 4)]
  assert "do not share the prompt" in result.skipped[0]
  assert "field 'rejected' has an empty response" in result.skipped[1]
  assert "field 'chosen' has no" in result.skipped[2]
  with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: fields 'chosen' and"):
    read_pairs(path)


def test_split_transcripts_uses_the_last_assistant_turn():
  c = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d"
  assert split_transcripts(c, c[:-1] + "e") == (c[:-2], " d", " e")


def _json_list(path, rows):
  path.write_bytes(b"[\n" + b",\n".join(r if isinstance(r, bytes) else
                                        json.dumps(r, indent=2).encode() for r in rows) + b"\n]")
  return path


LLMBAR = {"input": "q", "output_1": "a", "output_2": "b", "label": 1}


@pytest.mark.parametrize("row, message", [
    ({**LLMBAR, "label": "3"}, "field 'label' must be one of 1, 2 (number or string), got '3'"),
    ({**LLMBAR, "label": True}, "field 'label' must be one of 1, 2"),
    ({"input": "q", "output_1": "a", "label": 1}, "missing field 'output_2'"),
    ({**LLMBAR, "output_1": ""}, "field 'output_1' is empty"),
    ({**LLMBAR, "output_2": ["b"]}, "field 'output_2' must be text, got list"),
    (b'{"input": "q", "output_1": "caf\xe9", "output_2": "b", "label": 1}',
     "field 'output_1' is not valid UTF-8 (byte 0xe9"),
])
def test_llmbar_errors_name_index_and_line(tmp_path, row, message):
  path = _json_list(tmp_path / "dataset.json", [LLMBAR, row, {**LLMBAR, "label": "2"}])
  with pytest.raises(DataError) as e:
    read_pairs(path)
  line = 8  # "[", 6 lines of the first element, then the second starts
  assert str(e.value).startswith(f"{path}:[1] (line {line}): ") and message in str(e.value)
  result = read_pairs(path, skip_bad_rows=True)
  assert [(p.source, p.chosen) for p in result.pairs] == [
      (f"{path}:[0]", "a"), (f"{path}:[2]", "b")]
  assert result.skipped == [str(e.value)]


def test_broken_json_list_raises_even_when_skipping(tmp_path):
  path = tmp_path / "broken.json"
  path.write_text('[\n{"input": "q", "output_1": "a", "output_2": "b", "label": 1},\n'
                  '{"input": }\n]')
  with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:\[1\] \(line 3\): bad JSON"):
    read_pairs(path, skip_bad_rows=True)


def test_pandalm_votes_ties_and_bad_annotator(tmp_path):
  base = {"instruction": "do", "input": "", "response1": "r1", "response2": "r2"}
  votes = [(1, 1, 2), (0, 2, 2), (0, 0, 0), (0, 0, 1), (0, 1, 2), (1, 2, 5)]
  rows = [{**base, "annotator1": a, "annotator2": b, "annotator3": c} for a, b, c in votes]
  rows[1]["input"] = "ctx"
  path = _json_list(tmp_path / "panda.json", rows)
  with pytest.raises(DataError,
                     match=r":\[5\] \(line \d+\): field 'annotator3' must be one of 0, 1, 2"):
    read_pairs(path)
  result = read_pairs(path, skip_bad_rows=True)
  assert result.format == "pandalm" and result.dropped_ties == 3 and len(result.skipped) == 1
  assert [(p.prompt, p.chosen) for p in result.pairs] == [("do", "r1"), ("do\n\nctx", "r2")]


def test_format_detection_and_unknown(tmp_path):
  path = _jsonl(tmp_path / "odd.jsonl", [_dump({"question": "q", "answer": "a"})])
  with pytest.raises(DataError, match=r"cannot tell the format .*'answer', 'question'.*format="):
    read_pairs(path)
  with pytest.raises(ValueError, match="unknown format"):
    read_pairs(path, "csv")
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(DataError, match="no rows"):
    read_pairs(empty)
  pairs_list = _json_list(tmp_path / "pairs.json", [{**GOOD, "margin": 1}])
  assert read_pairs(pairs_list).pairs[0].margin == 1.0


def test_parquet_round_trip(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  rows = [{"prompt": "p1", "chosen": "c1", "rejected": "r1", "margin": 0.5, "weight": 2.0},
          {"prompt": "p2", "chosen": "c2", "rejected": "r2", "margin": None, "weight": None}]
  path = tmp_path / "pairs.parquet"
  pq.write_table(pa.Table.from_pylist(rows), path)
  result = read_pairs(path)
  assert result.format == "pairs"
  assert [(p.prompt, p.chosen, p.rejected, p.margin, p.weight, p.source) for p in result.pairs] == [
      ("p1", "c1", "r1", 0.5, 2.0, f"{path}:[0]"), ("p2", "c2", "r2", None, None, f"{path}:[1]")]
  tokens = tmp_path / "tokens.parquet"
  pq.write_table(pa.Table.from_pylist([{"prompt": [1, 2], "chosen": [3], "rejected": [4, 5]},
                                       {"prompt": [1], "chosen": [], "rejected": [6]}]), tokens)
  result = read_pairs(tokens, skip_bad_rows=True)
  assert result.pairs[0].chosen == [3]
  assert result.skipped == [f"{tokens}:[1]: field 'chosen' is empty"]
  missing = tmp_path / "missing.parquet"
  pq.write_table(pa.Table.from_pylist([{"prompt": "p", "chosen": "c", "rejected": None}]), missing)
  with pytest.raises(DataError, match=rf"^{re.escape(str(missing))}:\[0\]: field 'rejected' "
                                      r"must be text, got null"):
    read_pairs(missing, "pairs")


def test_shared_data_dir_env(tmp_path, monkeypatch):
  monkeypatch.setenv("RMJAX_SHARED_DATA", str(tmp_path))
  assert readers.shared_data_dir() == tmp_path
  monkeypatch.setenv("RMJAX_SHARED_DATA", str(tmp_path / "absent"))
  assert readers.shared_data_dir() is None
  with pytest.raises(FileNotFoundError, match="no data folder: set RMJAX_SHARED_DATA"):
    llmbar_subsets()
  with pytest.raises(FileNotFoundError, match="no LLMBar data"):
    llmbar_subsets(tmp_path)


def test_skipped_rows_and_identical_pairs_are_reported_once(tmp_path, capsys):
  bad = [_dump({"prompt": "p", "chosen": "x"}), "{nope", _dump({**GOOD, "weight": -1}),
         _dump({**GOOD, "chosen": 7})]
  same = _dump({"prompt": "p", "chosen": "tie", "rejected": "tie"})
  path = _jsonl(tmp_path / "x.jsonl", [_dump(GOOD), *bad, same, _dump(GOOD), same])
  result = read_pairs(path, "pairs", skip_bad_rows=True)
  err = capsys.readouterr().err.splitlines()
  assert len(result.skipped) == 4 and result.identical == [f"{path}:6", f"{path}:8"]
  assert err == [
      f"{path}: skipped 4 bad rows (skip_bad_rows): {path}:2: missing field 'rejected'; "
      f"{path}:3: bad JSON: Expecting property name enclosed in double quotes at column 2; "
      f"{path}:4: field 'weight' must be >= 0, got -1; ...",
      f"{path}: 2 pairs with chosen == rejected (kept, no preference to learn): "
      f"{path}:6, {path}:8"]
  read_pairs(path, "pairs", skip_bad_rows=True, report=False)
  clean = _jsonl(tmp_path / "clean.jsonl", [_dump(GOOD)])
  read_pairs(clean, "pairs")
  assert capsys.readouterr().err == ""


def test_identical_token_id_pairs_are_counted(tmp_path):
  rows = [{"prompt": [1], "chosen": [2, 3], "rejected": [2, 3]},
          {"prompt": [1], "chosen": [2, 3], "rejected": [2, 4]}]
  path = _jsonl(tmp_path / "ids.jsonl", [_dump(r) for r in rows])
  assert read_pairs(path, report=False).identical == [f"{path}:1"]
