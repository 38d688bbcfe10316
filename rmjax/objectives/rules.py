"""Rule-based rewards of a response against a reference: sentence BLEU and exact match.

Pure functions of token-id sequences (Python lists or 1-D arrays; no jit: lengths vary).
BLEU as BLEUBERI ("BLEUBERI: BLEU is a surprisingly effective reward for instruction
following", Chang et al. 2025) uses it as an RL reward: the geometric mean of the clipped
n-gram precisions p_1 … p_N (N = 4) times the brevity penalty,

  BLEU = BP · exp(Σ_n log p_n / N),   BP = 1 if c ≥ r else exp(1 − r/c),

c and r the candidate's and the reference's lengths, p_n = Σ_g min(count_c(g), count_r(g))
/ Σ_g count_c(g) over the candidate's n-grams g. With ``smoothing`` (default) the
precisions of n ≥ 2 add one to numerator and denominator (Lin and Och 2004), so a short
response that misses every 4-gram scores above 0. ``docs/algorithms.md`` §5c.
"""

from __future__ import annotations

import math
from collections import Counter

RULES = ("bleu", "exact_match")


def _ngrams(tokens, n: int) -> Counter:
  return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(candidate, reference, max_n: int = 4, smoothing: bool = True) -> float:
  """BLEU of ``candidate`` against one ``reference`` (token ids), in [0, 1]; 0 for an
  empty candidate."""
  candidate, reference = list(candidate), list(reference)
  c, r = len(candidate), len(reference)
  if c == 0 or r == 0:
    return 0.0
  log_total = 0.0
  for n in range(1, max_n + 1):
    cand, ref = _ngrams(candidate, n), _ngrams(reference, n)
    matches = sum(min(k, ref[g]) for g, k in cand.items())
    total = max(c - n + 1, 0)
    if smoothing and n > 1:
      matches, total = matches + 1, total + 1
    if matches == 0 or total == 0:
      return 0.0
    log_total += math.log(matches / total)
  brevity = 1.0 if c >= r else math.exp(1.0 - r / c)
  return brevity * math.exp(log_total / max_n)


def exact_match(candidate, reference) -> float:
  """1.0 if the token ids are equal, else 0.0."""
  return float(list(candidate) == list(reference))


def score(rule: str, candidate, reference) -> float:
  """The reward of ``rule`` (one of ``RULES``)."""
  if rule == "bleu":
    return sentence_bleu(candidate, reference)
  if rule == "exact_match":
    return exact_match(candidate, reference)
  raise ValueError(f"reward rule {rule!r} is not one of {RULES}")
