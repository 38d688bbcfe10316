"""Reward transforms: LSC, AND-combination of several reward models, calibrated reward.

Pure functions of arrays, jit-able. Equations: ``docs/algorithms.md`` §4
(Wang et al. 2024, "Transforming and Combining Rewards", for LSC and the AND-combination;
Leng et al. 2024, PPO-C, for the calibrated reward). Where a transform sits in the PPO
score pipeline is §5: ensemble objective → transform (this file) → running normalisation
→ clip. Normalisation and the clip that follows it are in normalised units and live with
the running statistics in ``rmjax.rl``, not here.

LSC ("log-sigmoid centred") maps a reward to u(x, y) = log σ(r(x, y) − r_ref(x)), where
r_ref(x) is a high quantile (0.85) of the rewards that reference-policy samples of the
same prompt x get. u ≤ 0, is strictly increasing in r, and saturates at 0: once a response
beats the reference comfortably, raising its reward further earns almost nothing, which
is what blunts reward hacking. Summing u over J reward models (``and_combine``) is a soft
logical AND: one badly failed property costs log σ(very negative) ≈ the whole deficit,
whereas a weighted sum lets a large reward on one property buy off a failure on another.

Using LSC with best-of-n (``rmjax.objectives.bon``): the proxy there is a [P, N] array of scores
(P prompts, N samples per prompt, e.g. ``ensemble.combine(members, "mean")``). Compute
r_ref per prompt from reference-policy samples of the SAME prompt, then transform row by
row::

  r_ref = reference_quantile(ref_scores)        # ref_scores [P, M] → [P]
  u = lsc(proxy, r_ref)                         # [P, N]; row p uses r_ref[p]
  bon.best_of_n_estimate(u, {"proxy": u, "gold": gold}, ns)

Best-of-n samples are themselves reference samples, so ``ref_scores`` may be ``proxy``
itself (or a held-out set of reference samples for the same prompts). With one reward
model, LSC is strictly increasing within a prompt, so best-of-n picks the same winners and
the gold estimate does not change; only the proxy's units do. It changes the selection
when several reward models are AND-combined: scores [P, N, J] of J reward models, with
per-prompt, per-model references ``reference_quantile(jnp.moveaxis(ref_scores, 1, -1))``
([P, M, J] → [P, J]), go through ``and_combine`` to a [P, N] proxy.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from rmjax.objectives.precision import at_least_f32


def _concrete(x):
  """``x`` as a numpy array when its value is known, None when it is traced under jit."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


# --- r_ref(x): the per-prompt reference reward --------------------------------------------

REFERENCE_METHODS = ("empirical", "gaussian")


def reference_quantile(ref_rewards, q=0.85, method="empirical"):
  """Per-prompt reference reward r_ref(x), the q-quantile of reference samples' rewards (§4).

  Wang et al. take r_ref(x) as the 0.85 quantile of the rewards of reference (SFT) policy
  samples for prompt x; §4 leaves open whether that quantile is empirical or from a
  Gaussian fit, so both are offered:

  - "empirical": ``jnp.quantile(..., method="linear")``, numpy's default (Hyndman–Fan
    type 7): the sorted samples sit at positions 0..N−1 and position q·(N − 1) is
    linearly interpolated between its two neighbours.
  - "gaussian": μ + z_q·σ with μ, σ the sample mean and population std (ddof 0, the
    Gaussian's maximum-likelihood fit) and z_q = Φ⁻¹(q) (``ndtri``; z_0.85 = 1.0364).

  Args:
    ref_rewards: [P, N] rewards of N reference samples for each of P prompts (more
      generally [..., N]: every axis but the last is kept).
    q: quantile level in (0, 1); 0.85 is the paper's.
    method: "empirical" or "gaussian".

  Returns:
    [P] (generally [...]) float32 r_ref.
  """
  r = at_least_f32(ref_rewards)
  if r.ndim < 1 or r.shape[-1] < 1:
    raise ValueError(f"ref_rewards must be [P, N] with N >= 1 reference samples per prompt on "
                     f"the last axis; got shape {r.shape}")
  if method not in REFERENCE_METHODS:
    raise ValueError(f"method={method!r} is not one of {list(REFERENCE_METHODS)}")
  q_val = _concrete(q)
  if q_val is not None and (q_val.ndim != 0 or not 0.0 < float(q_val) < 1.0):
    raise ValueError(f"q={q_val.tolist()} must be a single number in (0, 1)")
  q = jnp.asarray(q, r.dtype)
  if method == "empirical":
    return jnp.quantile(r, q, axis=-1, method="linear")
  return jnp.mean(r, axis=-1) + ndtri(q) * jnp.std(r, axis=-1)


# --- LSC and the AND-combination ----------------------------------------------------------

def lsc(rewards, r_ref):
  """LSC transform u = log σ(r − r_ref(x)) (§4, Wang et al. 2024).

  Computed as ``jax.nn.log_sigmoid`` (−softplus(−d)), stable for any d = r − r_ref: it
  tends to d for d → −∞ and to −e^{−d} → 0 for d → +∞, with no overflow. The result is
  ≤ 0, strictly increasing in r, and equals −log 2 where r = r_ref.

  Args:
    rewards: [B] rewards, or [B, ...] (e.g. best-of-n's [P, N]) where every entry of row b
      shares the reference r_ref[b].
    r_ref: [B] per-prompt reference rewards (``reference_quantile``), broadcast over the
      trailing axes of ``rewards``.

  Returns:
    float32 (at least) u with the shape of ``rewards``.
  """
  r, ref = at_least_f32(rewards), at_least_f32(r_ref)
  if r.ndim < 1 or ref.shape != r.shape[:1]:
    raise ValueError(f"rewards must be [B] or [B, ...] and r_ref [B] (one reference per "
                     f"leading row); got rewards {r.shape} and r_ref {ref.shape}")
  ref = ref.reshape(ref.shape + (1,) * (r.ndim - 1))
  return jax.nn.log_sigmoid(r - ref)


def and_combine(rewards, r_refs):
  """Logical-AND combination u = Σ_j log σ(r_j − r_j^ref) of J reward models (§4).

  The replacement Wang et al. propose for the weighted sum Σ_j w_j r_j (``weighted_sum``):
  every model's reward is LSC-transformed against its own reference before summing, so a
  response scores well only if it beats the reference on every property.

  Args:
    rewards: [B, J] rewards of J reward models (more generally [B, ..., J], e.g.
      best-of-n's [P, N, J]).
    r_refs: [B, J] per-prompt, per-model references (broadcast over the middle axes of
      ``rewards``), or an array with the shape of ``rewards``.

  Returns:
    [B] (generally [B, ...]) float32 sum over the J models; each term is ≤ 0.
  """
  r, ref = at_least_f32(rewards), at_least_f32(r_refs)
  if r.ndim < 2 or r.shape[-1] < 1:
    raise ValueError(f"rewards must be [B, J] (or [B, ..., J]) with J >= 1 reward models on "
                     f"the last axis; got shape {r.shape}")
  per_prompt = (r.shape[0], r.shape[-1])
  if ref.shape == per_prompt:
    ref = ref.reshape((r.shape[0],) + (1,) * (r.ndim - 2) + (r.shape[-1],))
  elif ref.shape != r.shape:
    raise ValueError(f"r_refs must be [B, J]={per_prompt} or the shape of rewards {r.shape}; "
                     f"got {ref.shape}")
  return jnp.sum(jax.nn.log_sigmoid(r - ref), axis=-1)


def weighted_sum(rewards, weights):
  """The raw weighted sum Σ_j w_j r_j of J reward models that ``and_combine`` replaces (§4).

  Args:
    rewards: [..., J] rewards of J reward models.
    weights: [J] weights w_j.

  Returns:
    [...] float32 Σ_j w_j r_j.
  """
  r, w = at_least_f32(rewards), at_least_f32(weights)
  if r.ndim < 1 or w.shape != r.shape[-1:]:
    raise ValueError(f"weights must be [J] with J = the last axis of rewards {r.shape}; got "
                     f"weights {w.shape}")
  return jnp.sum(r * w, axis=-1)


# --- Calibrated reward (PPO-C) ------------------------------------------------------------

def ema_init(value=0.0):
  """Initial EMA state r̄ for ``ema_update``: a float32 scalar array.

  §4 does not fix r̄'s starting value; 0.0 is the default here. To start from the data
  instead, pass the first batch's mean reward (``ema_init(rewards.mean())``).
  """
  v = at_least_f32(value)
  if v.shape != ():
    raise ValueError(f"the EMA state is a scalar; got value of shape {v.shape}")
  return v


def ema_update(state, rewards, alpha=0.1):
  """One step of the reward EMA r̄ ← α·mean(r) + (1 − α)·r̄ (§4, PPO-C; α = 0.1).

  Args:
    state: [] float32 r̄ (from ``ema_init`` or a previous update).
    rewards: [B] (any shape; every entry counts) raw rewards of this batch, before
      calibration.
    alpha: α in (0, 1], the weight of the new batch.

  Returns:
    [] float32 new r̄.
  """
  mean = at_least_f32(state)
  r = at_least_f32(rewards)
  if mean.shape != ():
    raise ValueError(f"state must be the scalar r̄ (shape ()); got shape {mean.shape}")
  if r.size == 0:
    raise ValueError(f"rewards is empty (shape {r.shape})")
  if isinstance(alpha, numbers.Real) and not 0.0 < alpha <= 1.0:
    raise ValueError(f"alpha={alpha} must be in (0, 1]")
  return alpha * jnp.mean(r) + (1.0 - alpha) * mean


def calibrated_reward(rewards, confidence, mean, w=2.0):
  """PPO-C calibrated reward r' = r + w·(r − r̄)·(ĉ − 0.5) (§4, Leng et al. 2024; w = 2).

  A response whose reward beats the running average r̄ gains for stating high confidence
  and loses for low; one below r̄ is penalised for high confidence. ĉ = 0.5 leaves r as is.
  In a PPO step, calibrate the batch with the current r̄, then ``ema_update`` it with the
  batch's raw rewards (§4 does not fix the order; this one keeps r̄ free of the batch it
  judges).

  Args:
    rewards: [B] rewards r (any shape).
    confidence: ĉ in [0, 1] with the shape of ``rewards`` (the verbalised confidence,
      e.g. a stated 0–10 score divided by 10). Checked when its value is known (not traced).
    mean: [] the EMA r̄ (``ema_update``), or an array broadcastable to ``rewards``.
    w: the calibration weight.

  Returns:
    float32 (at least) r' with the shape of ``rewards``.
  """
  r, c, m = at_least_f32(rewards), at_least_f32(confidence), at_least_f32(mean)
  if c.shape != r.shape:
    raise ValueError(f"confidence must have the shape of rewards {r.shape}; got {c.shape}")
  try:
    fits = jnp.broadcast_shapes(m.shape, r.shape) == r.shape
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(f"mean must be a scalar r̄ or broadcast to rewards {r.shape}; got "
                     f"{m.shape}")
  c_val = _concrete(confidence)
  if c_val is not None and not np.all((c_val >= 0.0) & (c_val <= 1.0)):
    bad = c_val[~((c_val >= 0.0) & (c_val <= 1.0))]
    raise ValueError(f"confidence must lie in [0, 1]; got values such as {bad.flat[0]}")
  return r + w * (r - m) * (c - 0.5)
