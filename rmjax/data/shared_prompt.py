"""Shared-prompt encoding: a pair packed as [prompt | chosen | rejected] in one row.

The prompt is encoded once instead of twice. Both responses continue the prompt's
positions (chosen and rejected each start at position len(prompt)), and the attention
mask keeps them apart: a token sees the prompt and the earlier tokens of its own
segment, never the other response. Rewards are read at each response's last token.
Rows are laid out in fixed slots so every batch has the same shape:
``prompt_slot + 2 * response_slot`` tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rmjax.data import schema

PAD_SEGMENT, PROMPT, CHOSEN, REJECTED = -1, 0, 1, 2
PACKED_KEYS = ("packed_tokens", "packed_segments", "packed_positions", "chosen_last",
               "rejected_last")


def slot_sizes(arrays: dict[str, np.ndarray]) -> tuple[int, int]:
  """(prompt slot, response slot) that fit every pair of a dataset."""
  prompt_len = arrays["prompt_len"]
  response = max(int((arrays[schema.CHOSEN_MASK].sum(1) - prompt_len).max()),
                 int((arrays[schema.REJECTED_MASK].sum(1) - prompt_len).max()))
  return int(prompt_len.max()), response


def pack(batch: dict[str, np.ndarray], prompt_slot: int, response_slot: int) -> dict:
  """Joined-sequence pair batch (right-padded, with "prompt_len") -> packed batch.

  Returns the PACKED_KEYS arrays [batch, prompt_slot + 2 * response_slot] (the last
  indices [batch]) plus the batch's margin and weight.
  """
  rows = len(batch["prompt_len"])
  width = prompt_slot + 2 * response_slot
  tokens = np.zeros((rows, width), np.int32)
  segments = np.full((rows, width), PAD_SEGMENT, np.int8)
  positions = np.zeros((rows, width), np.int32)
  last = {CHOSEN: np.zeros(rows, np.int32), REJECTED: np.zeros(rows, np.int32)}
  sides = ((CHOSEN, schema.CHOSEN_TOKENS, schema.CHOSEN_MASK),
           (REJECTED, schema.REJECTED_TOKENS, schema.REJECTED_MASK))
  for i in range(rows):
    p = int(batch["prompt_len"][i])
    tokens[i, :p] = batch[schema.CHOSEN_TOKENS][i, :p]
    segments[i, :p] = PROMPT
    positions[i, :p] = np.arange(p)
    for segment, token_key, mask_key in sides:
      n = int(batch[mask_key][i].sum()) - p
      if n < 1 or n > response_slot or p > prompt_slot:
        raise ValueError(f"row {i}: prompt {p} / response {n} tokens do not fit slots "
                         f"{prompt_slot} / {response_slot}")
      start = prompt_slot + (segment - 1) * response_slot
      tokens[i, start:start + n] = batch[token_key][i, p:p + n]
      segments[i, start:start + n] = segment
      positions[i, start:start + n] = np.arange(p, p + n)
      last[segment][i] = start + n - 1
  return {"packed_tokens": tokens, "packed_segments": segments,
          "packed_positions": positions, "chosen_last": last[CHOSEN],
          "rejected_last": last[REJECTED], schema.MARGIN: batch[schema.MARGIN],
          schema.WEIGHT: batch[schema.WEIGHT]}


def attention_mask(segments: jax.Array) -> jax.Array:
  """segments [batch, seq] -> [batch, seq, seq] bool.

  Query i sees key j when both are real, j comes no later than i, and j is in the
  prompt or in i's own segment.
  """
  real = segments != PAD_SEGMENT
  seq = segments.shape[1]
  causal = jnp.tril(jnp.ones((seq, seq), bool))
  visible = (segments[:, None, :] == PROMPT) | (segments[:, None, :] == segments[:, :, None])
  return causal[None] & visible & real[:, :, None] & real[:, None, :]
