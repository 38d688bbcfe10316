"""Conservative objectives over a reward-model ensemble, and per-member normalisation.

Pure functions of arrays. ``rewards`` holds the K member rewards on the LAST axis,
``[..., K]`` float (e.g. ``[batch, K]`` from ``Transformer.rewards`` or ``[prompts, N, K]``
from best-of-n scoring); every objective reduces that axis and returns ``[...]`` in (at
least) float32. Equations: ``docs/algorithms.md`` §3 (Coste et al. 2023 for mean,
WCO, UWO and the normalisation; Yan et al. 2024 for BRME).

Configs name an objective by string; ``combine(rewards, "uwo", lam=0.1)`` dispatches.
Each objective with a parameter has its own default, named below with its source; a
config keeps one field per objective (``options`` maps them to ``combine``'s kwargs), so
that tuning one objective never changes another.
"""

from __future__ import annotations

import inspect
import numbers

import jax.numpy as jnp

from rmjax.objectives.precision import at_least_f32

# UWO's λ: Coste et al. 2023 used 0.5 in their best-of-n experiments and 0.1 in PPO (the
# paper is inconsistent, §3); each program's default is the value of its own setting.
UWO_LAM_BON = 0.5
UWO_LAM_PPO = 0.1
# BRME's λ (Yan et al. 2024, §3): the paper leaves it open; 0.5 weighs the nominal reward
# and the worst member equally, a neutral choice rather than a paper value.
BRME_LAM = 0.5


def _members(rewards):
  """``rewards`` as float [..., K], K >= 1, or a ValueError naming the shape."""
  r = at_least_f32(rewards)
  if r.ndim < 1 or r.shape[-1] < 1:
    raise ValueError(f"rewards must be [..., K] with K >= 1 members on the last axis; got "
                     f"shape {r.shape}")
  return r


def _check_coef(name, value, low, high=None):
  """Range-check a Python-number coefficient (traced values pass through unchecked)."""
  if isinstance(value, numbers.Real) and not (low <= value and (high is None or value <= high)):
    bound = f"[{low}, {high}]" if high is not None else f">= {low}"
    raise ValueError(f"{name}={value} must be {bound}")


def mean(rewards):
  """Ensemble mean R̄ = (1/K) Σ_i R_i (§3). [..., K] → [...]."""
  return jnp.mean(_members(rewards), axis=-1)


def worst_case(rewards):
  """Worst-case optimisation (WCO): min_i R_i (§3). [..., K] → [...]."""
  return jnp.min(_members(rewards), axis=-1)


def uncertainty_weighted(rewards, lam=UWO_LAM_BON, unbiased=False):
  """Uncertainty-weighted optimisation (UWO): R̄ − λ·Var_i(R_i) (§3). [..., K] → [...].

  Var is the population variance (1/K) Σ_i (R_i − R̄)², as in Coste et al.'s equation;
  ``unbiased=True`` uses 1/(K − 1), which their PPO code used (§3 marks this a split).
  λ = 0.5 (``UWO_LAM_BON``) is the paper's best-of-n value and the default here; PPO used
  λ = 0.1 (``UWO_LAM_PPO``; §3: the paper is inconsistent), the default of ``rmjax rl``'s
  ``reward.uwo_lam``. λ = 0 is the plain mean.

  Args:
    rewards: [..., K] member rewards.
    lam: λ >= 0, the variance penalty.
    unbiased: divide by K − 1 instead of K (needs K >= 2).
  """
  r = _members(rewards)
  _check_coef("lam", lam, 0.0)
  k = r.shape[-1]
  if unbiased and k < 2:
    raise ValueError(f"unbiased=True needs K >= 2 members; rewards has K={k}")
  var = jnp.var(r, axis=-1, ddof=1 if unbiased else 0)
  return jnp.mean(r, axis=-1) - lam * var


def brme(rewards, lam=BRME_LAM, stds=None):
  """BRME-style reward-robust objective λ·R_nominal + (1 − λ)·min_i R_i (§3, Yan et al.).

  Scalar heads (``stds=None``): R_nominal = the ensemble mean R̄. Gaussian heads: each
  member predicts a mean (``rewards``) and a std (``stds``), and per example R_nominal is
  the mean of the head with the lowest predicted std (the first such head on ties); the
  min term is over the predicted means. §3 leaves λ open; 0.5 (``BRME_LAM``) is a neutral
  default, not a paper value. λ = 1 is the nominal alone, λ = 0 is WCO.

  Args:
    rewards: [..., K] member rewards (Gaussian heads: their predicted means).
    lam: λ in [0, 1].
    stds: None, or [..., K] predicted stds, same shape as ``rewards``.

  Returns:
    [...] objective.
  """
  r = _members(rewards)
  _check_coef("lam", lam, 0.0, 1.0)
  if stds is None:
    nominal = jnp.mean(r, axis=-1)
  else:
    s = at_least_f32(stds)
    if s.shape != r.shape:
      raise ValueError(f"stds must have the shape of rewards {r.shape}; got {s.shape}")
    best = jnp.argmin(s, axis=-1)
    nominal = jnp.take_along_axis(r, best[..., None], axis=-1)[..., 0]
  return lam * nominal + (1.0 - lam) * jnp.min(r, axis=-1)


def single(rewards, member=0):
  """One member's reward R_member, the single-model baseline. [..., K] → [...]."""
  r = _members(rewards)
  k = r.shape[-1]
  if not -k <= member < k:
    raise ValueError(f"member={member} is out of range for K={k} members")
  return r[..., member]


def normalization_stats(reference_rewards):
  """Per-member mean and std of rewards on reference-policy samples (§3).

  Coste et al. normalise each member to zero mean and unit std on samples of the
  reference (initial) policy before combining, so that members on different scales weigh
  equally in min and variance. The std is the population std, so ``normalize`` maps the
  reference samples to exactly mean 0, std 1 per member.

  Args:
    reference_rewards: [..., K] member rewards of reference samples; every axis but the
      last is pooled (e.g. [prompts, N, K]).

  Returns:
    (mean [K], std [K]) float32. A member that is constant on the reference samples has
    std 0; its std is returned as 1 so that normalising only centres it (no division by 0).
  """
  r = _members(reference_rewards)
  if r.size == 0:
    raise ValueError(f"reference_rewards is empty (shape {r.shape})")
  flat = r.reshape(-1, r.shape[-1])
  mu = jnp.mean(flat, axis=0)
  sd = jnp.std(flat, axis=0)
  return mu, jnp.where(sd > 0, sd, 1.0)


def normalize(rewards, mu, sigma):
  """(R_i − μ_i) / σ_i per member (§3). rewards [..., K]; μ, σ [K] from
  ``normalization_stats`` → [..., K]."""
  r = _members(rewards)
  mu, sd = at_least_f32(mu), at_least_f32(sigma)
  k = r.shape[-1]
  if mu.shape != (k,) or sd.shape != (k,):
    raise ValueError(f"mu and sigma must be [K]=[{k}] (one per member of rewards "
                     f"{r.shape}); got {mu.shape} and {sd.shape}")
  return (r - mu) / sd


def options(objective: str, uwo_lam: float = UWO_LAM_PPO, brme_lam: float = BRME_LAM) -> dict:
  """``combine``'s kwargs for ``objective`` from one parameter per objective: ``uwo_lam``
  for "uwo", ``brme_lam`` for "brme", nothing for the others."""
  return {"uwo": {"lam": uwo_lam}, "brme": {"lam": brme_lam}}.get(objective, {})


OBJECTIVES = {"mean": mean, "wco": worst_case, "uwo": uncertainty_weighted, "brme": brme,
              "single": single}


def combine(rewards, objective: str, **kwargs):
  """Apply the objective named ``objective`` to member rewards [..., K] → [...].

  Names: "mean", "wco" (min), "uwo" (kwargs lam, unbiased), "brme" (kwargs lam, stds),
  "single" (kwarg member, default 0). Normalise first (``normalize``) where §3 asks for it.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective={objective!r} is not one of {sorted(OBJECTIVES)}")
  fn = OBJECTIVES[objective]
  allowed = [p for p in inspect.signature(fn).parameters if p != "rewards"]
  if unknown := sorted(set(kwargs) - set(allowed)):
    raise ValueError(f"objective {objective!r} takes {allowed or 'no options'}; got "
                     f"unknown {unknown}")
  return fn(rewards, **kwargs)
