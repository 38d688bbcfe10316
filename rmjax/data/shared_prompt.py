"""Shared-prompt encoding: a pair packed as [prompt | chosen | rejected] in one row.

The prompt is encoded once instead of twice. Both responses continue the prompt's
positions (chosen and rejected each start at position len(prompt)), and the attention
mask keeps them apart: a token sees the prompt and the earlier tokens of its own
segment, never the other response. Rewards are read at each response's last token.
The three segments sit back to back, right-padded to a ``width``: ``packed_width`` holds
every pair of a dataset, ``bucket_width`` rounds a batch's own longest pair up to a
multiple of 64, so a step compiles once per bucket and a batch of short pairs pays for
short rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rmjax.data import schema

PAD_SEGMENT, PROMPT, CHOSEN, REJECTED = -1, 0, 1, 2
PACKED_KEYS = ("packed_tokens", "packed_segments", "packed_positions", "chosen_last",
               "rejected_last")


def packed_width(arrays: dict[str, np.ndarray]) -> int:
  """Longest prompt + chosen + rejected over the pairs of ``arrays`` (joined-sequence
  arrays with "prompt_len"): the width ``pack`` needs for all of them."""
  return int((arrays[schema.CHOSEN_MASK].sum(1) + arrays[schema.REJECTED_MASK].sum(1)
              - arrays["prompt_len"]).max())


def truncated_width(seq_len: int, max_response_len: int | None) -> int:
  """A width that holds any pair cut by ``pipeline.truncate_pair``: there
  prompt + max(chosen, rejected) <= seq_len and min(chosen, rejected) <= the response
  cap, so the three segments together never exceed their sum."""
  return seq_len + min(max_response_len or seq_len, seq_len)


def bucket_width(batch: dict[str, np.ndarray], max_width: int, multiple: int = 64) -> int:
  """The batch's longest prompt + chosen + rejected rounded up to ``multiple``, at most
  ``max_width`` (the dataset's ``packed_width`` or ``truncated_width``)."""
  return min(max_width, -(-packed_width(batch) // multiple) * multiple)


def pack(batch: dict[str, np.ndarray], width: int) -> dict:
  """Joined-sequence pair batch (right-padded, with "prompt_len") -> packed batch.

  Returns the PACKED_KEYS arrays [batch, width] (the last indices [batch]) plus the
  batch's per-pair arrays (margin, weight and any other [batch] array but "prompt_len").
  """
  rows = len(batch["prompt_len"])
  tokens = np.zeros((rows, width), np.int32)
  segments = np.full((rows, width), PAD_SEGMENT, np.int8)
  positions = np.zeros((rows, width), np.int32)
  last = {CHOSEN: np.zeros(rows, np.int32), REJECTED: np.zeros(rows, np.int32)}
  sides = ((CHOSEN, schema.CHOSEN_TOKENS, schema.CHOSEN_MASK),
           (REJECTED, schema.REJECTED_TOKENS, schema.REJECTED_MASK))
  for i in range(rows):
    p = int(batch["prompt_len"][i])
    lengths = [int(batch[mask_key][i].sum()) - p for _, _, mask_key in sides]
    if min(lengths) < 1 or p + sum(lengths) > width:
      raise ValueError(f"row {i}: prompt {p} + responses {lengths} tokens do not fit "
                       f"width {width}")
    tokens[i, :p] = batch[schema.CHOSEN_TOKENS][i, :p]
    segments[i, :p] = PROMPT
    positions[i, :p] = np.arange(p)
    start = p
    for (segment, token_key, _), n in zip(sides, lengths):
      tokens[i, start:start + n] = batch[token_key][i, p:p + n]
      segments[i, start:start + n] = segment
      positions[i, start:start + n] = np.arange(p, p + n)
      last[segment][i] = start + n - 1
      start += n
  return {"packed_tokens": tokens, "packed_segments": segments,
          "packed_positions": positions, "chosen_last": last[CHOSEN],
          "rejected_last": last[REJECTED],
          **{k: v for k, v in batch.items() if v.ndim == 1 and k != "prompt_len"}}


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
