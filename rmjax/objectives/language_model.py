"""Next-token cross-entropy of a causal language model: pure functions of logits and tokens.

Position t's logits predict token t + 1. A prediction counts only when both tokens are
real (``mask`` True at t and at t + 1), so right or left padding and a row's first token
(which nothing predicts) drop out. Used by the backbone pretraining of ``rmjax.lm``, by
PPO-ptx's language-model loss (``rmjax.rl.ppo_step``), and, over response tokens only, by
supervised fine-tuning (``rmjax.rl.sft``) and the sequence log-probs of ``rmjax.rl.dpo``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rmjax.objectives.precision import at_least_f32


def next_token_nll(logits, tokens):
  """−log softmax(logits[:, t])[tokens[:, t + 1]]: logits [B, S, V], tokens int [B, S] ->
  [B, S − 1] (at least float32; log_softmax is shifted by the max, so large logits do not
  overflow)."""
  logp = jax.nn.log_softmax(at_least_f32(logits[:, :-1]), axis=-1)
  return -jnp.take_along_axis(logp, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]


def next_token_mask(mask):
  """bool [B, S] real tokens -> bool [B, S − 1]: the predictions that count."""
  m = jnp.asarray(mask, bool)
  return m[:, 1:] & m[:, :-1]


def next_token_sums(logits, tokens, mask):
  """(Σ nll over the counted predictions, their count): scalars, so that means over
  several batches weigh every token alike. Shapes as ``next_token_loss``."""
  m = next_token_mask(mask)
  nll = next_token_nll(logits, tokens)
  return jnp.sum(jnp.where(m, nll, 0.0)), jnp.sum(m)


def next_token_loss(logits, tokens, mask):
  """Mean next-token cross-entropy (nats) over the counted predictions; 0 when none.

  logits [B, S, V]; tokens int [B, S]; mask bool [B, S] (True on real tokens). -> scalar.
  """
  total, count = next_token_sums(logits, tokens, mask)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def response_prediction_mask(mask, prompt_len):
  """bool [B, S − 1]: the counted predictions (``next_token_mask``) whose target is a
  response token, i.e. at position ≥ ``prompt_len`` [B] of a row that is prompt then
  response (right-padded). The first response token counts: the prompt's last predicts it."""
  m = next_token_mask(mask)
  position = jnp.arange(1, m.shape[1] + 1)[None, :]
  return m & (position >= jnp.asarray(prompt_len)[:, None])


def response_loss(logits, tokens, mask, prompt_len, prompt_weight=0.0):
  """Supervised fine-tuning's loss: the next-token cross-entropy of the response tokens
  (the prompt is context, not a target), plus the prompt's own predictions weighted by
  ``prompt_weight`` (0: response only; 1: every token alike, as pretraining); the weighted
  mean, 0 when a batch has nothing to predict. Shapes as ``next_token_loss`` plus
  prompt_len int [B]."""
  response = response_prediction_mask(mask, prompt_len)
  weight = jnp.where(response, 1.0, jnp.where(next_token_mask(mask), prompt_weight, 0.0))
  nll = next_token_nll(logits, tokens)
  total = jnp.sum(weight)
  return jnp.where(total > 0, jnp.sum(weight * nll) / jnp.maximum(total, 1e-12), 0.0)
