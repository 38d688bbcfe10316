"""Rule-based reward sources: each response scored against its prompt's reference answer
by a rule of ``objectives.rules`` (BLEU as in BLEUBERI, exact match for tasks with an
answer), as a one-member reward source (``rmjax.rm.reward_source``).

The references come with the prompts: a prompts file's rows {"prompt", "<reference_field>"}
(text through the policy's tokenizer, without its special prefix or EOS, or token ids).
A response is the row's tokens after its ``prompt_len`` up to its end, the EOS dropped; its
prompt (the row's first ``prompt_len`` tokens, as the sampler produced them from the
encoded prompt) finds its reference.
"""

from __future__ import annotations

import numpy as np

from rmjax.data import readers, schema
from rmjax.objectives import rules

SCALES = {"bleu": "sentence BLEU-4 (add-one smoothing for n >= 2) against the reference, "
                  "in [0, 1]",
          "exact_match": "1 if the response equals the reference, else 0"}


class RuleSource:
  """``rule`` of every response against the reference of its prompt."""

  num_members = 1
  task = ""

  def __init__(self, rule: str, references: dict, vocab_size: int, eos_id: int | None,
               tokenizer: str = ""):
    if rule not in rules.RULES:
      raise ValueError(f"reward.rules: {rule!r} is not one of {rules.RULES}")
    if not references:
      raise ValueError(f"reward rule {rule!r} has no references")
    self.rule, self.references, self.eos_id = rule, references, eos_id
    self.vocab_size, self.tokenizer = int(vocab_size), tokenizer
    self.name, self.scale = f"rule {rule}", SCALES[rule]

  def response(self, row_tokens, real: int, prompt: int) -> list[int]:
    out = [int(t) for t in row_tokens[prompt:real]]
    if out and self.eos_id is not None and out[-1] == self.eos_id:
      out = out[:-1]
    return out

  def __call__(self, tokens, mask, prompt_len=None):
    if prompt_len is None:
      raise ValueError(f"{self.name} scores a response against its prompt's reference: the "
                       "caller must pass each row's prompt_len")
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    lengths, real = np.asarray(prompt_len), mask.sum(axis=1)
    out = np.empty((len(tokens), 1), np.float32)
    for i, row in enumerate(tokens):
      key = tuple(int(t) for t in row[:lengths[i]])
      if key not in self.references:
        raise ValueError(f"{self.name}: row {i}'s prompt (first tokens {list(key[:8])}) has no "
                         "reference")
      out[i, 0] = rules.score(self.rule, self.response(row, real[i], lengths[i]),
                              self.references[key])
    return out


def reference_rows(path: str, field: str) -> tuple[list, list]:
  """(prompts, references) of every row of a prompts file with both fields, in file order;
  a row without the reference field is a one-line error naming it."""
  prompts, references = [], []
  for _, where, row in readers.read_records(path):
    value = row.get(field) if isinstance(row, dict) else None
    ok = (isinstance(value, str) and value.strip()) or (
        isinstance(value, list) and value and all(isinstance(t, int) for t in value))
    if not ok or not isinstance(row.get("prompt"), (str, list)):
      raise schema.DataError(f"{where}: a rule reward needs 'prompt' and a non-empty "
                             f"{field!r} (prompts.reference_field) in every row of {path}")
    prompts.append(row["prompt"])
    references.append(value)
  return prompts, references


def encode_references(references: list, tokenizer) -> list[list[int]]:
  """Token ids of each reference: text through ``tokenizer`` (no special tokens), ids as
  given."""
  texts = [r for r in references if isinstance(r, str)]
  if texts and tokenizer is None:
    raise ValueError("text references need a tokenizer (prompts.tokenizer or the policy's)")
  encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
  return [list(next(encoded)) if isinstance(r, str) else list(r) for r in references]
