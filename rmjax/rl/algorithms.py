"""The online RL algorithms of ``rl.algorithm``: what each estimates its advantages with,
how its loss is reduced over tokens, where its KL to the reference goes, whether it trains
a critic. ``docs/algorithms.md`` §5b gives the equations and each default's source.

  algorithm     critic  advantages                         loss over tokens  KL
  ppo           yes     GAE on −β·KL_t + score, whitened    token_mean        reward (k1)
  rloo          no      leave-one-out of score − β·KL        constant          reward (k1)
  grpo          no      (R − mean_g) / (std_g + ε)          sequence_mean     loss (k3)
  dr_grpo       no      R − mean_g                          constant          loss (k3)
  reinforce_pp  no      return-to-go of −β·KL_t + score,    token_mean        reward (k1)
                        whitened over the batch

``rl.loss_aggregation``, ``kl.placement`` and ``rl.kl_estimator`` left empty take the
algorithm's column; set, they override it (e.g. GRPO with the KL in the reward).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from rmjax.objectives import advantages as adv_lib
from rmjax.objectives import kl as kl_lib
from rmjax.objectives import ppo

NAMES = ("ppo", "rloo", "grpo", "dr_grpo", "reinforce_pp")
PLACEMENTS = ("reward", "loss")
_DEFAULTS = {  # name: (critic, aggregation, KL placement)
    "ppo": (True, "token_mean", "reward"),
    "rloo": (False, "constant", "reward"),
    "grpo": (False, "sequence_mean", "loss"),
    "dr_grpo": (False, "constant", "loss"),
    "reinforce_pp": (False, "token_mean", "reward"),
}
GROUPED = ("rloo", "grpo", "dr_grpo")  # need k >= 2 samples per prompt


@dataclasses.dataclass(frozen=True)
class Settings:
  """One run's resolved choices (static: they pick compiled code)."""
  algorithm: str
  critic: bool
  aggregation: str
  kl_placement: str
  kl_estimator: str
  group_eps: float = 1e-4


def settings(rl_cfg, kl_cfg) -> Settings:
  """The ``Settings`` of an ``rl`` and a ``kl`` config section; a bad name is a one-line
  error naming the field."""
  name = str(rl_cfg.get("algorithm", "ppo"))
  if name not in NAMES:
    raise ValueError(f"rl.algorithm={name!r} is not one of {NAMES}")
  critic, aggregation, placement = _DEFAULTS[name]
  aggregation = str(rl_cfg.get("loss_aggregation", "") or aggregation)
  if aggregation not in ppo.AGGREGATIONS:
    raise ValueError(f"rl.loss_aggregation={aggregation!r} is not one of {ppo.AGGREGATIONS}")
  placement = str(kl_cfg.get("placement", "") or placement)
  if placement not in PLACEMENTS:
    raise ValueError(f"kl.placement={placement!r} is not one of {PLACEMENTS}")
  estimator = str(rl_cfg.get("kl_estimator", "") or ("k1" if placement == "reward" else "k3"))
  if estimator not in kl_lib.ESTIMATORS:
    raise ValueError(f"rl.kl_estimator={estimator!r} is not one of {kl_lib.ESTIMATORS}")
  samples = int(rl_cfg.get("samples_per_prompt", 1))
  if name in GROUPED and samples < 2:
    raise ValueError(f"rl.algorithm={name} compares the samples of a prompt: "
                     f"rl.samples_per_prompt={samples} must be >= 2")
  return Settings(name, critic, aggregation, placement, estimator,
                  float(rl_cfg.get("group_eps", 1e-4)))


def advantages(s: Settings, scores, logprobs, ref_logprobs, mask, beta, k: int,
               values=None, rl_cfg=None):
  """(advantages [B, T], returns [B, T] or None) of one rollout.

  Args:
    s: the run's ``Settings``.
    scores: [B] processed sequence scores (the reward pipeline's output).
    logprobs, ref_logprobs: [B, T] the sampling policy's and the reference's log-probs of
      the sampled tokens. mask: bool [B, T] response tokens.
    beta: scalar KL coefficient β. k: samples per prompt (rows of a prompt contiguous).
    values: [B, T] critic values (ppo only). rl_cfg: gamma, lam, whiten, advantage_clip
      (ppo only).
  """
  in_reward = s.kl_placement == "reward"
  if s.algorithm in ("ppo", "reinforce_pp"):
    rewards = ppo.per_token_rewards(scores, logprobs, ref_logprobs, mask,
                                    beta if in_reward else 0.0, s.kl_estimator)
    if s.algorithm == "reinforce_pp":
      return adv_lib.reinforce_pp(rewards, mask), None
    adv, returns = ppo.gae(rewards, values, mask, rl_cfg.gamma, rl_cfg.lam)
    if rl_cfg.whiten:
      adv = ppo.whiten(adv, mask, clip=rl_cfg.advantage_clip or None)
    return adv, returns
  rewards = jnp.asarray(scores, jnp.float32)
  if in_reward:
    rewards = rewards - beta * kl_lib.sequence_kl(logprobs, ref_logprobs, mask, s.kl_estimator)
  if s.algorithm == "rloo":
    seq = adv_lib.rloo(rewards, k)
  else:
    seq = adv_lib.group_relative(rewards, k, scale=s.algorithm == "grpo", eps=s.group_eps)
  return adv_lib.per_token(seq, mask), None
