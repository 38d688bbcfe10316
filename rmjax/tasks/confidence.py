"""Stated confidence on the synthetic task: what PPO-M and PPO-C calibrate (Leng et al.
2024, "Taming Overconfidence in LLMs"; ``docs/algorithms.md`` §4b).

Every response states a confidence with its last content token (the one before EOS, or the
last token of a response cut at max_response_len): token t states level
(t − FIRST_CONTENT) mod LEVELS, i.e. ĉ = level / (LEVELS − 1) in {0, 0.1, ..., 1}. A
response with no content token (EOS alone) states nothing, read as ĉ = 0.5. The base
policy's last token does not depend on the quality of what came before, so it starts
uncalibrated; a policy can learn to calibrate by choosing its last token.

A response is *correct* when its gold total beats the median gold total of base-policy
samples (``SyntheticTask.quality_threshold``): calibration compares ĉ with that outcome.

``preference.stated_confidence`` reads ĉ; labellers may favour confident responses
(``SyntheticConfig.confidence_bias``: the labelling score gains bias·(ĉ − 0.5), the bias
Leng et al. find in reward models). Here: the ids that restate a response's confidence,
PPO-M's calibration pairs (``rmjax train-rm`` with ``loss.calibration_pairs``) and the
correctness that calibration is measured against.
"""

from __future__ import annotations

import numpy as np

from rmjax.data import schema
from rmjax.tasks.preference import FIRST_CONTENT, LEVELS, last_content


def level_token(level: int, vocab_size: int, avoid=()) -> int:
  """The smallest content id stating ``level`` that is not in ``avoid`` (the task's harmful
  and marker ids, so that restating a confidence changes no other gold term's class)."""
  if not 0 <= level < LEVELS:
    raise ValueError(f"confidence level {level} is not in [0, {LEVELS - 1}]")
  avoid = set(np.asarray(avoid).tolist())
  for token in range(FIRST_CONTENT + level, vocab_size, LEVELS):
    if token not in avoid:
      return token
  raise ValueError(f"no content id below vocab_size {vocab_size} states level {level} "
                   "outside the avoided ids")


def restate(tokens, mask, prompt_len, token: int):
  """(tokens [B, S] with each response's last content token replaced by ``token``, which
  rows had one [B]): the same response stating another confidence."""
  tokens = np.array(tokens)
  last, has = last_content(tokens, mask, prompt_len)
  rows = np.flatnonzero(has)
  tokens[rows, last[rows]] = token
  return tokens, has


def calibration_pairs(task, arrays: dict, n: int) -> dict:
  """PPO-M's calibration pairs of the first ``n`` pairs of a split (``make_split``'s keys):
  for every pair whose responses both state a confidence, (chosen stating 10/10 ≻ chosen
  stating 0/10) and (rejected stating 0/10 ≻ rejected stating 10/10). Returned with the
  split's keys, chosen rows first; gold_* are the gold totals of the restated responses."""
  avoid = np.concatenate([task.harmful_ids, task.marker_ids])
  high, low = (level_token(v, task.cfg.vocab_size, avoid) for v in (LEVELS - 1, 0))
  plen = arrays["prompt_len"][:n]
  out = {k: [] for k in arrays}
  for side, first, second in ((schema.CHOSEN_TOKENS, high, low),
                              (schema.REJECTED_TOKENS, low, high)):
    mask = arrays[side.replace("tokens", "mask")][:n]
    better, has = restate(arrays[side][:n], mask, plen, first)
    worse, _ = restate(arrays[side][:n], mask, plen, second)
    keep = np.flatnonzero(has)
    gold = [task.score(t[keep], mask[keep], plen[keep])["total"] for t in (better, worse)]
    rows = {schema.CHOSEN_TOKENS: better[keep], schema.REJECTED_TOKENS: worse[keep],
            schema.CHOSEN_MASK: mask[keep], schema.REJECTED_MASK: mask[keep],
            schema.GOLD_CHOSEN: gold[0].astype(np.float32),
            schema.GOLD_REJECTED: gold[1].astype(np.float32),
            schema.MARGIN: np.zeros(len(keep), np.float32),
            schema.WEIGHT: np.ones(len(keep), np.float32),
            schema.FLIPPED: np.zeros(len(keep), bool), "prompt_len": plen[keep]}
    for k in out:
      out[k].append(rows[k])
  return {k: np.concatenate(v) for k, v in out.items()}


def correct(gold_total, threshold: float) -> np.ndarray:
  """float32 [B]: 1 where the gold total beats ``threshold`` (the task's median), else 0."""
  return (np.asarray(gold_total) > threshold).astype(np.float32)
