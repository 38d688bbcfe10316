"""Constrained RLHF's Lagrange multipliers (Moskovitz et al. 2024, "Confronting Reward Model
Overoptimization with Constrained RLHF"): one multiplier per component reward model, each
keeping its component's return at the threshold past which that proxy stops tracking the
true objective.

μ_i = σ(ν_i) ∈ (0, 1) weighs component i in the policy's reward Σ_i μ_i r_i; the
multipliers follow gradient descent on the Lagrangian term L(ν) = Σ_i μ_i (G_i − θ_i) with
G_i the batch's mean return of component i and θ_i its threshold: a component above its
threshold loses weight, one below gains it. ``docs/algorithms.md`` §5d.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rmjax.objectives.precision import at_least_f32


def multipliers(nu):
  """μ = σ(ν), [J]."""
  return jax.nn.sigmoid(at_least_f32(nu))


def multiplier_step(nu, returns, thresholds, lr):
  """ν − lr · ∂L/∂ν with L = Σ_i σ(ν_i)(G_i − θ_i): ν_i − lr · σ(ν_i)(1 − σ(ν_i))(G_i − θ_i).

  Args:
    nu: [J] logits of the multipliers. returns: [J] the batch's mean component returns
      G_i. thresholds: [J] θ_i. lr: the multipliers' learning rate.

  Returns:
    [J] the new ν.
  """
  nu = at_least_f32(nu)
  mu = jax.nn.sigmoid(nu)
  return nu - lr * mu * (1.0 - mu) * (at_least_f32(returns) - jnp.asarray(thresholds, nu.dtype))
