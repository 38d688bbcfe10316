"""KL between the policy and the reference: per-token estimators and the β controllers.

Pure functions of arrays. Token-level inputs are ``[B, T]`` log-probabilities of the sampled
tokens, log π_θ(y_t | x, y_<t) and log π_ref(y_t | x, y_<t), with a bool ``mask`` [B, T]
of valid response tokens. Equations: ``docs/algorithms.md`` §5 (per-token KL
penalty, adaptive KL controller of Ziegler et al. with the trlx defaults).

Estimators (Schulman, "Approximating KL divergence"), tokens sampled from π_θ, with
Δ = log π_θ − log π_ref and r = π_ref / π_θ = exp(−Δ):
  k1 = Δ                      unbiased, can be negative;
  k2 = ½ Δ²                   biased, low variance, ≥ 0;
  k3 = (r − 1) − log r        unbiased, ≥ 0 (since log r ≤ r − 1).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rmjax.objectives.precision import at_least_f32

ESTIMATORS = ("k1", "k2", "k3")


def kl_per_token(logprobs, ref_logprobs, estimator="k1"):
  """Per-token estimate of KL(π_θ ‖ π_ref) at the sampled tokens (§5, module docstring).

  k3 is computed as expm1(−Δ) + Δ, which keeps its precision when Δ is tiny.

  Args:
    logprobs, ref_logprobs: [...] log π_θ and log π_ref of the same tokens.
    estimator: "k1", "k2" or "k3" (static).

  Returns:
    float [...], the same shape; no masking.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}")
  delta = at_least_f32(logprobs) - at_least_f32(ref_logprobs)
  if estimator == "k1":
    return delta
  if estimator == "k2":
    return 0.5 * delta * delta
  return jnp.expm1(-delta) + delta


def sequence_kl(logprobs, ref_logprobs, mask, estimator="k1"):
  """Per-sequence KL Σ_t mask_t · k_t, the quantity the adaptive controller's target is in.

  Args:
    logprobs, ref_logprobs: [B, T]; mask: bool [B, T]; estimator as ``kl_per_token``.

  Returns:
    float [B]; take its mean over the batch for ``update_kl_controller``.
  """
  k = kl_per_token(logprobs, ref_logprobs, estimator)
  return jnp.sum(jnp.where(jnp.asarray(mask, bool), k, 0.0), axis=-1)


class KLController(NamedTuple):
  """State of a KL-coefficient controller: scalar float32 arrays, so it checkpoints as is.

  beta: the current coefficient β.
  target: target per-sequence KL in nats (unused when not adaptive).
  horizon: the horizon in samples (unused when not adaptive).
  adaptive: bool, False for a fixed β.
  """
  beta: jax.Array
  target: jax.Array
  horizon: jax.Array
  adaptive: jax.Array


def fixed_kl_controller(beta=0.05):
  """A constant β; the paper's runs use 0.05 (0.01–0.2 swept, §5)."""
  f = lambda v: jnp.asarray(v, jnp.float32)
  return KLController(f(beta), f(1.0), f(1.0), jnp.asarray(False))


def adaptive_kl_controller(init_beta=0.1, target=6.0, horizon=10_000):
  """Ziegler et al.'s adaptive β with the trlx defaults of §5 (β₀ 0.1, 6 nats, 10,000)."""
  f = lambda v: jnp.asarray(v, jnp.float32)
  return KLController(f(init_beta), f(target), f(horizon), jnp.asarray(True))


def update_kl_controller(state, kl, n_steps):
  """One controller step (§5, Ziegler et al.):

    e = clip(KL / target − 1, −0.2, 0.2),   β ← β · (1 + e · n_steps / horizon).

  A fixed controller returns its state unchanged.

  Args:
    state: KLController.
    kl: scalar observed KL, the batch mean of ``sequence_kl`` (k1 in trlx).
    n_steps: scalar number of samples (sequences) the KL was measured on.

  Returns:
    the new KLController.
  """
  error = jnp.clip(at_least_f32(kl) / state.target - 1.0, -0.2, 0.2)
  new_beta = state.beta * (1.0 + error * at_least_f32(n_steps) / state.horizon)
  return state._replace(beta=jnp.where(state.adaptive, new_beta, state.beta)
                        .astype(state.beta.dtype))
