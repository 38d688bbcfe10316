"""TFDS ArrayRecord builder (no TensorFlow) and the grain pair pipeline over it.

Two datasets are prepared once per module in a tmp data_dir: a JSONL file of text pairs
tokenised by characters, and the synthetic task's 64-pair train split.
"""

import dataclasses
import importlib.util
import json
import sys

import grain
import numpy as np
import pytest

from rmjax.data import schema
from rmjax.data import tfds_builder as TB
from rmjax.data.pipeline import PairPipeline, PipelineConfig, eval_batches, truncate_pair
from rmjax.data.schema import DataError, PreferencePair
from rmjax.tasks.preference import SyntheticConfig, make_split

FIELDS = ("prompt", "chosen", "rejected")
NO_SHARD = grain.sharding.NoSharding()


def char_tokenizer(pairs):
  """Token id = code point (a trivial, deterministic tokenizer)."""
  return {f: [[ord(c) for c in getattr(p, f)] for p in pairs] for f in FIELDS}


def ids(text):
  return [ord(c) for c in text]


ROWS = [dict(prompt=f"q{i} " * (i % 4), chosen=f"good answer {i}" + "!" * i, rejected=f"bad {i}",
             **({"margin": 0.5 * i, "weight": 2.0} if i % 3 == 0 else {})) for i in range(12)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def text(data_dir):
  path = data_dir / "pairs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
  builder = TB.build_from_files(data_dir, "text", path, {"train": (1, 10), "eval": (10, None)},
                                char_tokenizer, tokenizer_id="chars")
  return path, builder, TB.data_sources(data_dir, "text")


@pytest.fixture(scope="module")
def synth_arrays():
  return make_split(SyntheticConfig(num_train_pairs=64, num_eval_pairs=16), "train")


@pytest.fixture(scope="module")
def synth(data_dir, synth_arrays):
  TB.build_from_arrays(data_dir, "synthetic", {"train": synth_arrays})
  return TB.data_sources(data_dir, "synthetic")["train"]


def test_text_records_keep_features_keys_and_order(text):
  path, builder, sources = text
  assert set(sources) == {"train", "eval"}
  assert (len(sources["train"]), len(sources["eval"])) == (9, 3)  # lines 1-9 and 10-12
  feats = builder.info.features
  assert feats["prompt"].shape == (None,) and feats["prompt"].np_dtype == np.int32
  assert "gold_chosen" not in feats and "flipped" not in feats
  for split, first_line in (("train", 1), ("eval", 10)):
    for i in range(len(sources[split])):
      rec, row = sources[split][i], ROWS[first_line - 1 + i]
      assert rec["source"].decode() == f"{path}:{first_line + i}"  # key = file:line, in order
      for f in FIELDS:
        assert rec[f].dtype == np.int32 and rec[f].tolist() == ids(row[f])
      assert rec["margin"] == row.get("margin", 0.0) and rec["weight"] == row.get("weight", 1.0)
  assert sources["train"][0]["prompt"].size == 0  # empty prompts are kept
  assert "tensorflow" not in sys.modules and importlib.util.find_spec("tensorflow") is None


def test_prepare_again_reuses_or_refuses_changed_data(text, data_dir):
  path, builder, _ = text
  again = TB.build_from_files(data_dir, "text", path, {"train": (1, 10), "eval": (10, None)},
                              char_tokenizer, tokenizer_id="chars")
  assert again.fingerprint == builder.fingerprint == builder.info.metadata["fingerprint"]
  with pytest.raises(ValueError, match="prepared from other data") as refused:
    TB.build_from_files(data_dir, "text", path, {"train": (1, 9), "eval": (9, None)},
                        char_tokenizer, tokenizer_id="chars")
  # The advice is something a user of the CLI can do (it has no overwrite option).
  advice = str(refused.value)
  assert "overwrite" not in advice
  assert f"delete {builder.data_dir}" in advice and "--config.data.files.name" in advice


def test_builder_input_errors(tmp_path):
  pairs = [PreferencePair(prompt="p", chosen="a", rejected="b", source=f"f:{i}") for i in (1, 2)]
  with pytest.raises(DataError, match="f:1: pair holds text but no tokenizer"):
    TB.build(tmp_path, "x", {"train": pairs})
  with pytest.raises(DataError, match="f:1: the same source appears twice"):
    TB.build(tmp_path, "x", {"train": pairs, "eval": pairs[:1]}, char_tokenizer)
  with pytest.raises(ValueError, match="overlap"):
    TB.split_by_lines(pairs, {"train": (1, 3), "eval": (2, None)})
  gold = dataclasses.replace(pairs[0], gold_chosen=1.0, gold_rejected=0.0)
  with pytest.raises(DataError, match="f:2: field 'gold_chosen' is missing"):
    TB.build(tmp_path, "x", {"train": [gold, pairs[1]]}, char_tokenizer)


def test_synthetic_records_and_fixed_padding_reproduce_make_split(synth, synth_arrays):
  rec = synth[5]
  assert rec["source"] == b"synthetic:train:5"
  assert {"gold_chosen", "gold_rejected", "flipped"} <= set(rec)
  seq_len = synth_arrays[schema.CHOSEN_TOKENS].shape[1]
  pipe = PairPipeline(synth, PipelineConfig(batch_size=16, seq_len=seq_len, shuffle=False,
                                            num_epochs=1), NO_SHARD)
  assert len(pipe) == 4
  got = {k: np.concatenate([pipe.batch(s)[k] for s in range(4)]) for k in pipe.batch(0)}
  np.testing.assert_array_equal(got["index"], np.arange(64))
  for key, want in synth_arrays.items():
    assert got[key].dtype == want.dtype, key
    np.testing.assert_array_equal(got[key], want, err_msg=key)


def test_truncation_keeps_response_ends_and_a_shared_prompt_tail():
  p, c, r = np.arange(100, 110), np.arange(200, 206), np.arange(300, 303)
  prompt, chosen, rejected = truncate_pair(p, c, r, seq_len=10, max_response_len=4,
                                           keep_prompt_start=1)
  assert chosen.tolist() == [202, 203, 204, 205] and rejected.tolist() == [300, 301, 302]
  assert prompt.tolist() == [100, 105, 106, 107, 108, 109]  # BOS + tail, beside the longer side
  prompt, chosen, _ = truncate_pair(p, np.arange(200, 220), r, seq_len=8)
  assert prompt.size == 0 and chosen.tolist() == list(range(212, 220))
  assert [x.tolist() for x in truncate_pair(p[:2], c[:2], r[:2], seq_len=8)] == [
      [100, 101], [200, 201], [300, 301]]


def test_pipeline_truncates_and_pads_text_pairs(text):
  _, _, sources = text
  cfg = PipelineConfig(batch_size=9, seq_len=12, shuffle=False, num_epochs=1,
                       max_response_len=8, keep_prompt_start=1, pad_id=-1)
  batch = PairPipeline(sources["train"], cfg, NO_SHARD).batch(0)
  assert batch[schema.CHOSEN_TOKENS].shape == (9, 12) and batch[schema.CHOSEN_MASK].dtype == bool
  for i in range(9):
    row = ROWS[i]
    want_c, want_r = ids(row["chosen"])[-8:], ids(row["rejected"])[-8:]
    plen = int(batch["prompt_len"][i])
    for side, want in (("chosen", want_c), ("rejected", want_r)):
      tokens, mask = batch[f"{side}_tokens"][i], batch[f"{side}_mask"][i]
      n = int(mask.sum())
      assert mask[:n].all() and not mask[n:].any() and (tokens[n:] == -1).all()
      assert tokens[plen:n].tolist() == want  # the response's end, last real token last
    prompt = ids(row["prompt"])
    room = 12 - max(len(want_c), len(want_r))
    want_p = prompt if len(prompt) <= room else prompt[:1] + prompt[len(prompt) - room + 1:]
    assert batch[schema.CHOSEN_TOKENS][i][:plen].tolist() == want_p
    assert batch[schema.REJECTED_TOKENS][i][:plen].tolist() == want_p


def test_bucketing_cuts_each_batch_to_the_smallest_bucket(synth):
  fixed = PipelineConfig(batch_size=4, seq_len=36, seed=3)
  bucketed = dataclasses.replace(fixed, buckets=(16, 24))
  pa, pb = PairPipeline(synth, fixed, NO_SHARD), PairPipeline(synth, bucketed, NO_SHARD)
  widths = set()
  for step in range(16):
    a, b = pa.batch(step), pb.batch(step)
    width = b[schema.CHOSEN_TOKENS].shape[1]
    longest = max(a[schema.CHOSEN_MASK].sum(1).max(), a[schema.REJECTED_MASK].sum(1).max())
    assert width == min([w for w in (16, 24, 36) if w >= longest])
    widths.add(width)
    for k in a:
      np.testing.assert_array_equal(b[k], a[k][:, :width] if a[k].ndim == 2 else a[k])
  assert len(widths) >= 2


def test_shuffle_is_seeded_and_reshuffles_each_epoch(synth):
  def order(seed, steps=8):
    pipe = PairPipeline(synth, PipelineConfig(batch_size=16, seq_len=36, seed=seed), NO_SHARD)
    return np.concatenate([pipe.batch(s)["index"] for s in range(steps)])

  a = order(0)
  np.testing.assert_array_equal(a, order(0))
  assert not np.array_equal(a, order(1))
  epoch0, epoch1 = a[:64], a[64:]
  assert sorted(epoch0) == sorted(epoch1) == list(range(64))
  assert not np.array_equal(epoch0, epoch1) and not np.array_equal(epoch0, np.arange(64))


def test_sharding_splits_records_into_disjoint_halves(synth):
  cfg = PipelineConfig(batch_size=8, seq_len=36, seed=0, num_epochs=1)
  halves = [np.concatenate([b["index"] for b in PairPipeline(
      synth, cfg, grain.sharding.ShardOptions(h, 2, drop_remainder=True))]) for h in (0, 1)]
  assert len(halves[0]) == len(halves[1]) == 32
  assert not set(halves[0]) & set(halves[1])
  assert sorted(np.concatenate(halves)) == list(range(64))
  default = PairPipeline(synth, cfg)  # ShardByJaxProcess: one process here
  assert default.shard.shard_count == 1 and default.num_records == 64


def test_iterator_state_resumes_exactly(synth):
  cfg = PipelineConfig(batch_size=8, seq_len=36, seed=7, buckets=(16, 24))
  pipe = PairPipeline(synth, cfg, NO_SHARD)
  reference = [next(it) for it in [iter(pipe)] for _ in range(14)]  # crosses an epoch
  it = iter(pipe)
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  assert state["next_index"] == 5
  it.close()
  resumed = pipe.iterator(state)
  for step in range(5, 14):
    got = next(resumed)
    assert got.keys() == reference[step].keys()
    for k in got:
      np.testing.assert_array_equal(got[k], reference[step][k], err_msg=f"{k} at step {step}")
      np.testing.assert_array_equal(got[k], pipe.batch(step)[k])
  other = PairPipeline(synth, dataclasses.replace(cfg, seed=8), NO_SHARD)
  with pytest.raises(ValueError, match="another pipeline"):
    other.iterator(state)


def test_eval_batches_cover_every_record_once(synth):
  seen, count = [], 0
  for batch, real in eval_batches(synth, batch_size=24, seq_len=36):
    assert batch[schema.CHOSEN_TOKENS].shape == (24, 36)
    seen.extend(batch["index"][:real].tolist())
    count += 1
  assert seen == list(range(64)) and count == 3


def test_build_from_files_reports_skipped_rows_once(tmp_path, capsys):
  path = tmp_path / "rows.jsonl"
  rows = [json.dumps({"prompt": "p", "chosen": f"c{i}", "rejected": f"r{i}"}) for i in range(4)]
  path.write_text("\n".join([rows[0], "{broken", rows[1], '{"prompt": "p"}', *rows[2:]]) + "\n")
  TB.build_from_files(tmp_path / "data", "rows", path, {"train": (1, 5), "eval": (5, None)},
                      char_tokenizer, tokenizer_id="chars", skip_bad_rows=True)
  err = capsys.readouterr().err
  assert err.count("skipped 2 bad rows (skip_bad_rows)") == 1, err
  assert f"{path}:2: bad JSON" in err and f"{path}:4: missing field 'chosen'" in err
