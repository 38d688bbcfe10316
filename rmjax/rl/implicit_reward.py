"""A DPO-trained policy as a reward source: the implicit reward of the loss that trained it,
by default r(x, y) = β·(log π(y | x) − log π_ref(y | x)) summed over the response's tokens
(Rafailov et al. 2023; SimPO's and ORPO's in ``objectives.dpo.sequence_reward``), so that
``rmjax rl`` and best-of-n score with a DPO policy exactly as with a classifier reward
model (``reward.workdirs`` may name an ``rmjax dpo`` run).

``sequence_logprobs`` is the response log-likelihood of right-padded prompt + response
rows, shared with the DPO trainer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rmjax.models.transformer import Transformer
from rmjax.objectives import dpo as dpo_lib
from rmjax.objectives import language_model


def sequence_logprobs(model, tokens, mask, prompt_len):
  """(Σ log π(y_t | x, y_<t) over each row's response tokens [B], their count [B]) of
  right-padded rows [B, S] whose first ``prompt_len`` [B] tokens are the prompt."""
  hidden, _ = model(tokens, mask)
  token_logp = -language_model.next_token_nll(model.logits(hidden), tokens)
  response = language_model.response_prediction_mask(mask, prompt_len)
  return jnp.sum(jnp.where(response, token_logp, 0.0), axis=1), jnp.sum(response, axis=1)


_SCALES = {
    "simpo": "SimPO implicit reward beta * log(pi) / |y|, the mean token log-prob times beta "
             "(beta {beta:g}; at most 0)",
    "orpo": "ORPO log odds log(p / (1 - p)) of the mean token probability p (unbounded)",
}
_RATIO = ("implicit reward beta * log(pi / pi_ref) summed over the response (loss {loss}, "
          "beta {beta:g}; unbounded, 0 where the policy equals its reference)")


class ImplicitRewardSource:
  """The implicit reward of each response under ``dpo_cfg.loss`` (with its ``beta``), one
  member; needs each row's ``prompt_len``."""

  num_members = 1

  def __init__(self, policy: Transformer, reference: Transformer, dpo_cfg, name: str,
               tokenizer: str = "", task: str = ""):
    self.graphdef, self.params = nnx.split(policy)
    ref_graphdef, self.reference = nnx.split(reference)
    self.cfg = policy.cfg  # the policy's ModelConfig: the sequences it can read
    self.vocab_size = int(policy.cfg.vocab_size)
    self.loss, self.beta = str(dpo_cfg.loss), float(dpo_cfg.beta)
    self.name, self.tokenizer, self.task = name, tokenizer, task
    self.scale = _SCALES.get(self.loss, _RATIO).format(loss=self.loss, beta=self.beta)
    loss, beta, uses_reference = self.loss, self.beta, self.loss in dpo_lib.NEEDS_REFERENCE

    def score(params, reference, tokens, mask, prompt_len):
      logp, length = sequence_logprobs(nnx.merge(self.graphdef, params), tokens, mask,
                                       prompt_len)
      ref = (sequence_logprobs(nnx.merge(ref_graphdef, reference), tokens, mask,
                               prompt_len)[0] if uses_reference else None)
      return dpo_lib.sequence_reward(loss, beta, logp, ref, length)[:, None]

    if loss not in dpo_lib.LOSSES:
      raise ValueError(f"{name}: dpo.loss={loss!r} is not one of {dpo_lib.LOSSES}")
    self._score = jax.jit(score)

  def __call__(self, tokens, mask, prompt_len=None):
    if prompt_len is None:
      raise ValueError(f"{self.name}: the implicit reward sums over the response, so the "
                       "caller must pass each row's prompt_len")
    return self._score(self.params, self.reference, jnp.asarray(tokens), jnp.asarray(mask),
                       jnp.asarray(prompt_len, jnp.int32))
