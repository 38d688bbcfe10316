"""Direct preference optimisation losses: DPO, conservative DPO, IPO, SimPO, ORPO, KTO.

Pure, jit-able functions of per-pair sequence log-probabilities, each ``[B]``: the sum over
the response's tokens of log π(y_t | x, y_<t), for the chosen (c) and rejected (r)
response under the policy (π) and the frozen reference (ref), and, where a loss
length-normalises, the response lengths |y| (tokens). Each returns ``(losses [B],
metrics)``; the trainer takes the weighted mean. Equations, defaults and sources:
``docs/algorithms.md`` §7.

With the implicit rewards r̂_c = β(log π(y_c) − log ref(y_c)), r̂_r likewise, and
h = r̂_c − r̂_r:
  dpo    −log σ(h)                                  (Rafailov et al. 2023)
  cdpo   −(1 − ε) log σ(h) − ε log σ(−h)            (label smoothing ε)
  ipo    (h/β − 1/(2β))²                            (Azar et al. 2023)
  simpo  −log σ(β/|y_c| log π(y_c) − β/|y_r| log π(y_r) − γ)   (Meng et al. 2024; no ref)
  orpo   NLL(y_c)/|y_c| − λ log σ(log odds_c − log odds_r),
         odds = p/(1 − p), p = exp(log π(y)/|y|)    (Hong et al. 2024; no ref)
  kto    λ_D (1 − σ(r̂_c − β z)) + λ_U (1 − σ(β z − r̂_r)), z = max(0, KL estimate)
                                                    (Ethayarajh et al. 2024)
and, beside dpo in iterative DPO, SELM's optimism term α·β·(log π(y) − log ref(y)) of a
response y the sampling policy drew (Zhang et al. 2024).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rmjax.objectives.precision import at_least_f32

LOSSES = ("dpo", "cdpo", "ipo", "simpo", "orpo", "kto")
NEEDS_REFERENCE = ("dpo", "cdpo", "ipo", "kto")
OPTIMISM_LOSSES = ("dpo",)  # SELM adds its term to the sigmoid loss only


def implicit_rewards(logp_c, logp_r, ref_c, ref_r, beta):
  """(r̂_c, r̂_r) = β·(log π − log ref) of each response, [B] each."""
  f = at_least_f32
  return beta * (f(logp_c) - f(ref_c)), beta * (f(logp_r) - f(ref_r))


def _reward_metrics(chosen, rejected):
  return {"chosen_reward": jnp.mean(chosen), "rejected_reward": jnp.mean(rejected),
          "reward_margin": jnp.mean(chosen - rejected),
          "reward_accuracy": jnp.mean((chosen > rejected).astype(jnp.float32))}


def dpo(logp_c, logp_r, ref_c, ref_r, beta=0.1, label_smoothing=0.0):
  """DPO, or conservative DPO with ``label_smoothing`` ε > 0 (the label is wrong with
  probability ε); ε = 0 is plain DPO."""
  chosen, rejected = implicit_rewards(logp_c, logp_r, ref_c, ref_r, beta)
  h = chosen - rejected
  losses = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(h) \
      - label_smoothing * jax.nn.log_sigmoid(-h)
  return losses, _reward_metrics(chosen, rejected)


def selm_optimism(logp_y, ref_y, alpha, beta):
  """SELM's optimism term α·β·(log π(y) − log ref(y)), [B]: y is one response per pair
  drawn from the policy that sampled the pairs. Added to the DPO loss, minimising it lowers
  the likelihood ratio of what that policy already produces, which moves mass toward
  responses it has not explored; α = 0 is plain DPO."""
  f = at_least_f32
  return alpha * beta * (f(logp_y) - f(ref_y))


def ipo(logp_c, logp_r, ref_c, ref_r, beta=0.1):
  """IPO: the squared distance of the log-ratio margin from 1/(2β) (``beta`` is IPO's τ)."""
  chosen, rejected = implicit_rewards(logp_c, logp_r, ref_c, ref_r, beta)
  margin = (chosen - rejected) / beta
  return (margin - 1.0 / (2.0 * beta)) ** 2, _reward_metrics(chosen, rejected)


def simpo(logp_c, logp_r, len_c, len_r, beta=2.0, gamma=1.0):
  """SimPO: length-normalised log-likelihoods as rewards and a target margin γ; no
  reference model."""
  chosen = sequence_reward("simpo", beta, logp_c, None, len_c)
  rejected = sequence_reward("simpo", beta, logp_r, None, len_r)
  return -jax.nn.log_sigmoid(chosen - rejected - gamma), _reward_metrics(chosen, rejected)


def log1mexp(x):
  """log(1 − eˣ) for x < 0, accurate near 0 and for very negative x."""
  x = at_least_f32(x)
  return jnp.where(x > -0.6931472, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def orpo(logp_c, logp_r, len_c, len_r, lam=0.1):
  """ORPO: the chosen response's mean token NLL plus λ times the odds-ratio loss of the
  mean token log-probs; no reference model. Metrics add "nll" and "odds_ratio_loss"."""
  f = at_least_f32
  mean_c = f(logp_c) / jnp.maximum(f(len_c), 1.0)
  mean_r = f(logp_r) / jnp.maximum(f(len_r), 1.0)
  log_odds = (sequence_reward("orpo", 1.0, logp_c, None, len_c)
              - sequence_reward("orpo", 1.0, logp_r, None, len_r))
  ratio_loss = -jax.nn.log_sigmoid(log_odds)
  metrics = {**_reward_metrics(lam * mean_c, lam * mean_r), "nll": jnp.mean(-mean_c),
             "odds_ratio_loss": jnp.mean(ratio_loss)}
  return -mean_c + lam * ratio_loss, metrics


def kto(logp_c, logp_r, ref_c, ref_r, beta=0.1, desirable_weight=1.0,
        undesirable_weight=1.0):
  """KTO on paired data: the chosen response as desirable, the rejected as undesirable.

  The reference point z is max(0, the batch mean of (log π − log ref) over both
  responses), without gradient: rmjax's reading for paired batches of the paper's KL
  estimate on mismatched responses (see §7). losses [B] are the sum of both terms.
  """
  chosen, rejected = implicit_rewards(logp_c, logp_r, ref_c, ref_r, beta)
  z = jax.lax.stop_gradient(jnp.maximum(0.0, jnp.mean(chosen + rejected) / (2.0 * beta)))
  losses = desirable_weight * (1.0 - jax.nn.sigmoid(chosen - beta * z)) \
      + undesirable_weight * (1.0 - jax.nn.sigmoid(beta * z - rejected))
  return losses, {**_reward_metrics(chosen, rejected), "kto_z": z}


def sequence_reward(name: str, beta, logp, ref, length):
  """[B] the reward by which a policy trained with loss ``name`` ranks a response: the
  quantity its loss compares between the chosen and the rejected one. β(log π − log ref)
  for dpo, cdpo, ipo and kto; β·log π/|y| for simpo; for orpo the log odds m − log(1 − eᵐ)
  of the mean token log-prob m = log π/|y| (its odds-ratio term; λ only weighs that term
  against the NLL). ``ref`` is ignored by simpo and orpo."""
  if name not in LOSSES:
    raise ValueError(f"dpo.loss={name!r} is not one of {LOSSES}")
  f = at_least_f32
  if name in NEEDS_REFERENCE:
    return beta * (f(logp) - f(ref))  # ``implicit_rewards`` of one response
  mean = f(logp) / jnp.maximum(f(length), 1.0)
  return beta * mean if name == "simpo" else mean - log1mexp(mean)


def losses(name: str, cfg, logp_c, logp_r, ref_c, ref_r, len_c, len_r):
  """(losses [B], metrics) of loss ``name`` with its parameters from ``cfg`` (the ``dpo``
  config section: beta, label_smoothing, simpo_gamma, orpo_lambda, kto_desirable_weight,
  kto_undesirable_weight). ``ref_*`` are ignored by simpo and orpo."""
  if name not in LOSSES:
    raise ValueError(f"dpo.loss={name!r} is not one of {LOSSES}")
  if name in ("dpo", "cdpo"):
    return dpo(logp_c, logp_r, ref_c, ref_r, cfg.beta,
               cfg.label_smoothing if name == "cdpo" else 0.0)
  if name == "ipo":
    return ipo(logp_c, logp_r, ref_c, ref_r, cfg.beta)
  if name == "simpo":
    return simpo(logp_c, logp_r, len_c, len_r, cfg.beta, cfg.simpo_gamma)
  if name == "orpo":
    return orpo(logp_c, logp_r, len_c, len_r, cfg.orpo_lambda)
  return kto(logp_c, logp_r, ref_c, ref_r, cfg.beta, cfg.kto_desirable_weight,
             cfg.kto_undesirable_weight)
