"""Bradley–Terry reward-model loss and its evaluation metrics.

Pure functions of arrays: rewards of the chosen and rejected responses, ``r_chosen`` and
``r_rejected``, each ``[batch]`` float; Δ = r_chosen − r_rejected. Everything here is
jit-able and computed in (at least) float32. Equations: ``docs/algorithms.md``
§1 (Bradley–Terry, centering, score regularisation, metrics) and §2 (label smoothing,
adaptive margin, smoothing only where the ensemble strength μ < 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rmjax.objectives.precision import at_least_f32


def weighted_mean(values, weight):
  """Σ w·v / Σ w over ``[batch]``; 0 when the weights sum to 0 (an all-padding batch)."""
  total = jnp.sum(weight)
  safe = jnp.where(total > 0, total, 1.0)
  return jnp.where(total > 0, jnp.sum(weight * values) / safe, 0.0)


def bradley_terry_loss(r_chosen, r_rejected, margin=None, weight=None, label_smoothing=0.0,
                       smoothing_mask=None, center_coef=0.0, score_reg_coef=0.0):
  """Bradley–Terry loss with margin, label smoothing, pair weights and reward penalties.

  Per pair, with z = Δ − m and α_i = α where ``smoothing_mask`` (all pairs if None) else 0:
    ℓ_i = −[(1 − α_i) log σ(z) + α_i log(1 − σ(z))],   log(1 − σ(z)) = log σ(−z).
  α = 0 is plain BT, −log σ(Δ − m) (§1); m = μ_i from a reward ensemble is the adaptive
  margin of §2; smoothing only where μ_i < 0 is §2's best recipe (pass mask = μ < 0).
  The paper leaves α open. The loss is the weighted mean of ℓ plus two optional penalties (§1):
    centering (TRL):             c · mean((r_c + r_r)²)
    score regularisation (OA):   β · mean(½ (r_c² + r_r²))
  Every mean, penalties included, is weighted by ``weight`` (Σ w ℓ / Σ w, 0 if Σ w = 0), so
  zero-weight padding pairs drop out; with the default unit weights they are plain means.

  Args:
    r_chosen, r_rejected: [batch] rewards.
    margin: [batch] or scalar m, default 0.
    weight: [batch] non-negative pair weights, default 1.
    label_smoothing: α in [0, 1].
    smoothing_mask: [batch] bool, where to apply α; None applies it everywhere.
    center_coef: c; score_reg_coef: β.

  Returns:
    (loss scalar, aux) with aux = {"bt": smoothed BT term (no penalties), "center": c·…,
    "score_reg": β·…}; loss = bt + center + score_reg.
  """
  r_c, r_r = at_least_f32(r_chosen), at_least_f32(r_rejected)
  if r_c.shape != r_r.shape or r_c.ndim != 1:
    raise ValueError(f"r_chosen and r_rejected must both be [batch]; got {r_c.shape} and "
                     f"{r_r.shape}")
  z = r_c - r_r if margin is None else r_c - r_r - at_least_f32(margin)
  w = jnp.ones_like(r_c) if weight is None else jnp.broadcast_to(at_least_f32(weight), r_c.shape)
  alpha = jnp.broadcast_to(at_least_f32(label_smoothing), r_c.shape)
  if smoothing_mask is not None:
    alpha = jnp.where(jnp.asarray(smoothing_mask, bool), alpha, 0.0)
  per_pair = -((1.0 - alpha) * jax.nn.log_sigmoid(z) + alpha * jax.nn.log_sigmoid(-z))
  bt = weighted_mean(per_pair, w)
  center = center_coef * weighted_mean((r_c + r_r) ** 2, w)
  score_reg = score_reg_coef * weighted_mean(0.5 * (r_c ** 2 + r_r ** 2), w)
  return bt + center + score_reg, {"bt": bt, "center": center, "score_reg": score_reg}


def pairwise_accuracy(r_chosen, r_rejected):
  """Fraction of pairs with Δ > 0; a tie (Δ = 0) counts ½ (§1). [batch] → scalar."""
  delta = at_least_f32(r_chosen) - at_least_f32(r_rejected)
  return jnp.mean(jnp.where(delta > 0, 1.0, jnp.where(delta == 0, 0.5, 0.0)))


def mean_margin(r_chosen, r_rejected):
  """mean(Δ) = mean(r_c − r_r) (§1). [batch] → scalar."""
  return jnp.mean(at_least_f32(r_chosen) - at_least_f32(r_rejected))


def expected_calibration_error(delta, labels=None, num_bins=10):
  """ECE of σ(Δ) in its symmetric (own-choice) form (§1, "calibration of σ(Δ)").

  With every label "chosen is preferred", σ(Δ) against outcome 1 only measures how large
  σ(Δ) is, not its reliability. So each pair is scored as a binary classifier: the model
  picks chosen iff Δ > 0, with confidence c_i = max(p, 1 − p), p = σ(Δ_i), and is correct
  iff its pick matches the label (a tie Δ = 0 has c = ½ and counts ½ correct). Since
  c ∈ [½, 1], ``num_bins`` equal-width bins partition [½, 1] (left-closed, the last also
  holds 1), and
    ECE = Σ_b (n_b / N) · |acc_b − conf_b| = (1/N) Σ_b |Σ_{i∈b} (correct_i − c_i)|.

  Args:
    delta: [batch] Δ = r_c − r_r.
    labels: [batch] 1 where chosen is truly preferred, 0 where rejected is (soft labels in
      [0, 1] give expected correctness); None means all 1.
    num_bins: static number of bins.

  Returns:
    scalar ECE in [0, 1].
  """
  delta = at_least_f32(delta)
  p = jax.nn.sigmoid(delta)
  conf = jnp.maximum(p, 1.0 - p)
  y = jnp.ones_like(delta) if labels is None else at_least_f32(labels)
  correct = jnp.where(delta > 0, y, jnp.where(delta < 0, 1.0 - y, 0.5))
  bins = jnp.clip(jnp.floor((conf - 0.5) * 2.0 * num_bins), 0, num_bins - 1).astype(jnp.int32)
  gap = jax.ops.segment_sum(correct - conf, bins, num_segments=num_bins)
  return jnp.sum(jnp.abs(gap)) / delta.shape[0]


def pearson_correlation(x, y):
  """Pearson r of x and y, [n] → scalar; 0 when either side is constant.

  Used as a length-bias diagnostic (reward vs response length, §1 reward statistics).
    r = Σ (x − x̄)(y − ȳ) / √(Σ (x − x̄)² · Σ (y − ȳ)²)
  """
  x, y = at_least_f32(x), at_least_f32(y)
  dx, dy = x - jnp.mean(x), y - jnp.mean(y)
  constant = (jnp.max(x) == jnp.min(x)) | (jnp.max(y) == jnp.min(y))
  denom = jnp.sqrt(jnp.sum(dx * dx) * jnp.sum(dy * dy))
  safe = jnp.where(constant | (denom == 0), 1.0, denom)
  return jnp.where(constant | (denom == 0), 0.0, jnp.sum(dx * dy) / safe)


def gold_agreement(r_chosen, r_rejected, gold_chosen, gold_rejected):
  """Fraction of pairs with sign(Δ_model) == sign(Δ_gold); [batch] each → scalar.

  Δ_gold = gold_c − gold_r (e.g. the synthetic task's gold reward, §3 protocol). A tie
  agrees only with a tie.
  """
  model = jnp.sign(at_least_f32(r_chosen) - at_least_f32(r_rejected))
  gold = jnp.sign(at_least_f32(gold_chosen) - at_least_f32(gold_rejected))
  return jnp.mean((model == gold).astype(jnp.float32))
