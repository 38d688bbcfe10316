"""Gaussian reward heads: the preference likelihood of rewards that are distributions.

A Gaussian head predicts, for each response, a mean μ and a log-std ℓ of its reward
r ~ N(μ, s²), s = ``STD_FLOOR`` + exp(ℓ) (the BRME reward model of Yan et al. 2024;
``docs/algorithms.md`` §3, "Gaussian reward heads"). With independent rewards of the two
sides, r_c − r_r ~ N(μ_c − μ_r, s_c² + s_r²), so the probability that the chosen response
is the better one is the Thurstone (probit) link

    P(chosen ≻ rejected) = Φ(z),   z = (μ_c − μ_r − m) / √(s_c² + s_r²),

and the label's negative log-likelihood is −log Φ(z), in closed form, with no sampling.
Why not the reparameterised Bradley–Terry loss E_ε[−log σ(r_c − r_r)], r = μ + s·ε:
−log σ is convex, so added noise always raises its expectation (Jensen), on every pair;
that loss drives every std to its floor and learns no uncertainty. Under −log Φ(z) a larger
s lowers the loss of a pair the means order wrongly and raises it for one they order right,
so the std grows where the labels disagree with the means.

Pure functions of [batch] arrays, computed in (at least) float32.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from rmjax.objectives.bt import weighted_mean
from rmjax.objectives.precision import at_least_f32

# The least std a head can predict: s = STD_FLOOR + exp(ℓ) stays positive however negative
# ℓ gets, so z stays finite and no head can claim certainty. Small beside the unit std a
# freshly initialised head predicts (ℓ ≈ 0).
STD_FLOOR = 0.01


def std(log_std):
  """The predicted std s = ``STD_FLOOR`` + exp(ℓ) of log-std outputs ℓ, any shape."""
  return STD_FLOOR + jnp.exp(at_least_f32(log_std))


def preference_z(mu_chosen, mu_rejected, log_std_chosen, log_std_rejected, margin=None):
  """z = (μ_c − μ_r − m) / √(s_c² + s_r²), [batch] each → [batch]; P(chosen ≻ rejected)
  is Φ(z). ``margin``: [batch] or scalar m, default 0."""
  mu_c, mu_r = at_least_f32(mu_chosen), at_least_f32(mu_rejected)
  if not (mu_c.shape == mu_r.shape == jnp.shape(log_std_chosen) == jnp.shape(log_std_rejected)
          and mu_c.ndim == 1):
    raise ValueError(f"means and log-stds of both sides must all be [batch]; got "
                     f"{mu_c.shape}, {mu_r.shape}, {jnp.shape(log_std_chosen)}, "
                     f"{jnp.shape(log_std_rejected)}")
  delta = mu_c - mu_r if margin is None else mu_c - mu_r - at_least_f32(margin)
  return delta / jnp.sqrt(std(log_std_chosen) ** 2 + std(log_std_rejected) ** 2)


def preference_nll(mu_chosen, mu_rejected, log_std_chosen, log_std_rejected, margin=None,
                   label_smoothing=0.0, smoothing_mask=None):
  """Per-pair NLL of the label under Gaussian rewards, [batch] each → [batch]:

    ℓ_i = −[(1 − α_i) log Φ(z_i) + α_i log Φ(−z_i)],   z from ``preference_z``,

  α_i = α where ``smoothing_mask`` (all pairs if None) else 0: the label smoothing of
  ``bt.bradley_terry_loss`` with Φ in place of σ; α = 0 is −log Φ(z).
  """
  z = preference_z(mu_chosen, mu_rejected, log_std_chosen, log_std_rejected, margin)
  alpha = jnp.broadcast_to(at_least_f32(label_smoothing), z.shape)
  if smoothing_mask is not None:
    alpha = jnp.where(jnp.asarray(smoothing_mask, bool), alpha, 0.0)
  return -((1.0 - alpha) * log_ndtr(z) + alpha * log_ndtr(-z))


def gaussian_preference_loss(mu_chosen, mu_rejected, log_std_chosen, log_std_rejected,
                             margin=None, weight=None, label_smoothing=0.0,
                             smoothing_mask=None, center_coef=0.0, score_reg_coef=0.0):
  """The training loss of a Gaussian head: ``bt.bradley_terry_loss`` with the Gaussian NLL
  (``preference_nll``) in place of the Bradley–Terry term.

  The weighted mean Σ w ℓ / Σ w of the per-pair NLL plus the centering and score
  penalties of §1 on the means (c · mean((μ_c + μ_r)²), β · mean(½(μ_c² + μ_r²))), every
  mean weighted by ``weight`` (default 1).

  Returns:
    (loss scalar, aux) with aux = {"nll", "center", "score_reg"}; loss is their sum.
  """
  nll = preference_nll(mu_chosen, mu_rejected, log_std_chosen, log_std_rejected, margin,
                       label_smoothing, smoothing_mask)
  mu_c, mu_r = at_least_f32(mu_chosen), at_least_f32(mu_rejected)
  w = jnp.ones_like(nll) if weight is None else jnp.broadcast_to(at_least_f32(weight), nll.shape)
  nll = weighted_mean(nll, w)
  center = center_coef * weighted_mean((mu_c + mu_r) ** 2, w)
  score_reg = score_reg_coef * weighted_mean(0.5 * (mu_c ** 2 + mu_r ** 2), w)
  return nll + center + score_reg, {"nll": nll, "center": center, "score_reg": score_reg}
