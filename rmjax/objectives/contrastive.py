"""Contrastive auxiliary losses for reward models: SimCSE InfoNCE, SwAV, goal-conditioned.

Pure functions of arrays: hidden states ``[N, D]`` float (e.g. the final hidden state a
reward head reads), prototype scores ``[B, K]``; every loss returns a float32 scalar and is
jit-able. Making the two dropout views (two forward passes with dropout p = 0.05), the
prototypes and the weight β belong to the caller. Equations: ``docs/algorithms.md``
§2 ("Contrastive auxiliary loss": SimCSE and SwAV, pair and difference views) and §6
("Goal-conditioned contrastive RM", Nath et al. 2024).
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from rmjax.objectives.precision import at_least_f32

# Norm floor for cosine similarity: an all-zero row (h_c = h_r in the difference view) gets
# cosine 0 with everything and a finite gradient instead of 0/0.
_NORM_EPS = 1e-8


def _check_positive(name, value):
  """ValueError if a Python-number ``value`` is <= 0 (traced values pass through unchecked)."""
  if isinstance(value, numbers.Real) and not value > 0:
    raise ValueError(f"{name}={value} must be > 0")


def _matrix(name, x):
  """``x`` as float [N, D] with N, D >= 1, or a ValueError naming ``name`` and the shape."""
  x = at_least_f32(x)
  if x.ndim != 2 or 0 in x.shape:
    raise ValueError(f"{name} must be a non-empty [N, D] matrix; got shape {x.shape}")
  return x


def _unit_rows(x):
  """Rows of ``x`` scaled to unit L2 norm; the floor keeps the gradient at 0 finite."""
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, _NORM_EPS ** 2))


def _cosine(a, b):
  """Row-wise cosine similarity of two [N, D] matrices → [N]."""
  return jnp.sum(_unit_rows(a) * _unit_rows(b), axis=-1)


def info_nce(view_a, view_b, temperature=0.05):
  """SimCSE InfoNCE over cosine similarities, one-sided a → b (as SimCSE) (§2).

  With s_ij = cos(a_i, b_j) / τ, item i's positive is b_i (the other dropout view of the
  same item) and its negatives are the other rows of b:
    L = (1/N) Σ_i −log softmax_j(s_ij)[j = i] = (1/N) Σ_i [logsumexp_j s_ij − s_ii].
  Only a's rows are anchors; the symmetric variant is the caller's mean of
  ``info_nce(a, b)`` and ``info_nce(b, a)``. τ = 0.05 is SimCSE's usual value (§2: open).

  Args:
    view_a, view_b: [N, D] two views of the same N items (N >= 1; N = 1 gives loss 0).
    temperature: τ > 0.

  Returns:
    scalar loss.
  """
  _check_positive("temperature", temperature)
  a, b = _matrix("view_a", view_a), _matrix("view_b", view_b)
  if a.shape != b.shape:
    raise ValueError(f"view_a and view_b must have the same shape; got {a.shape} and {b.shape}")
  logits = _unit_rows(a) @ _unit_rows(b).T / temperature
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.diagonal(logits))


def _pair(h_chosen, h_rejected):
  h_c, h_r = _matrix("h_chosen", h_chosen), _matrix("h_rejected", h_rejected)
  if h_c.shape != h_r.shape:
    raise ValueError(f"h_chosen and h_rejected must have the same shape [B, D]; got "
                     f"{h_c.shape} and {h_r.shape}")
  return h_c, h_r


def pair_views(h_chosen, h_rejected):
  """Pair view (§2): chosen and rejected states as separate items, [B, D] each → [2B, D].

  Rows 0..B−1 are h_c, rows B..2B−1 are h_r. Build it from each dropout pass and feed the two
  results to ``info_nce``: every response is then its own item, and the other responses of
  the batch (its pair partner included) are its negatives.
  """
  h_c, h_r = _pair(h_chosen, h_rejected)
  return jnp.concatenate([h_c, h_r], axis=0)


def difference_views(h_chosen, h_rejected):
  """Difference view (§2, the paper's best variant): [B, D] each → [2B, D].

  Rows 0..B−1 are h_c − h_r, rows B..2B−1 their mirrors h_r − h_c, so that the preference
  direction and its reverse are separate items (each mirror is a negative of its original,
  at cosine −1 within one dropout pass).
  """
  h_c, h_r = _pair(h_chosen, h_rejected)
  d = h_c - h_r
  return jnp.concatenate([d, -d], axis=0)


def sinkhorn(scores, epsilon=0.05, iterations=3):
  """SwAV's Sinkhorn–Knopp soft assignments of B items to K prototypes, without gradient (§2).

  Q ∝ exp(scores / ε) (as a [B, K] matrix), then ``iterations`` times: scale every prototype
  column to total mass 1/K, then every item row to total mass 1/B; finally Q ← B·Q. Each row
  then sums to 1 exactly and, as the iterations converge, each column to B/K (an equal
  partition of the batch over the prototypes). Computed in the log domain so that a small ε
  cannot overflow exp or zero a whole row; the result equals the plain-domain iteration.
  The codes are targets, so the output is wrapped in ``stop_gradient``.

  Args:
    scores: [B, K] item–prototype scores (cosines when items and prototypes are normalised).
    epsilon: ε > 0, the entropic regularisation (SwAV's 0.05).
    iterations: >= 1 alternating normalisations (SwAV's 3).

  Returns:
    [B, K] assignments q, rows summing to 1.
  """
  _check_positive("epsilon", epsilon)
  if not isinstance(iterations, numbers.Integral) or iterations < 1:
    raise ValueError(f"iterations={iterations!r} must be an int >= 1")
  s = _matrix("scores", scores)
  b, k = s.shape
  # The plain-domain version first divides Q by its total; the first column scaling removes
  # any constant factor, so that step is left out here.
  log_q = jax.lax.stop_gradient(s) / epsilon
  for _ in range(iterations):
    log_q = log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - math.log(k)
    log_q = log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True) - math.log(b)
  return jax.lax.stop_gradient(jnp.exp(log_q) * b)


def swav_loss(scores_a, scores_b, temperature=0.1, epsilon=0.05, iterations=3):
  """SwAV swapped prediction between two views' prototype scores (§2).

  q_a = sinkhorn(scores_a), q_b = sinkhorn(scores_b), p_v = softmax(scores_v / τ) per row;
    L = ½ [ (1/B) Σ_i −Σ_k q_b,ik log p_a,ik + (1/B) Σ_i −Σ_k q_a,ik log p_b,ik ],
  i.e. each view's codes are the targets for the other view's prediction. Gradients flow
  only through the predictions. Normalising the items and the K prototypes to unit length
  (so scores are cosines) is the caller's, as is re-normalising the prototypes after each
  update; §2 uses K = 20 (difference view) or 50 (pair view).

  Args:
    scores_a, scores_b: [B, K] scores of the two dropout views against the same prototypes.
    temperature: τ > 0 of the prediction softmax (SwAV's 0.1).
    epsilon, iterations: passed to ``sinkhorn``.

  Returns:
    scalar loss.
  """
  _check_positive("temperature", temperature)
  s_a, s_b = _matrix("scores_a", scores_a), _matrix("scores_b", scores_b)
  if s_a.shape != s_b.shape:
    raise ValueError(f"scores_a and scores_b must have the same shape [B, K]; got {s_a.shape} "
                     f"and {s_b.shape}")
  q_a = sinkhorn(s_a, epsilon, iterations)
  q_b = sinkhorn(s_b, epsilon, iterations)
  log_p_a = jax.nn.log_softmax(s_a / temperature, axis=-1)
  log_p_b = jax.nn.log_softmax(s_b / temperature, axis=-1)
  a_from_b = -jnp.mean(jnp.sum(q_b * log_p_a, axis=-1))
  b_from_a = -jnp.mean(jnp.sum(q_a * log_p_b, axis=-1))
  return 0.5 * (a_from_b + b_from_a)


def goal_conditioned_loss(h_pos, h_goal_pos, h_neg, h_goal_neg):
  """Goal-conditioned contrastive term of Nath et al. 2024 (§6), without β.

    L = −log mean_i σ(cos(h_s⁺,i, h_g⁺,i)) − log(1 − mean_j σ(cos(h_s′,j, h_g⁻,j)))
  pulls states of preferred trajectories toward their goal states and pushes the other
  states away from theirs. Cosines lie in [−1, 1], so both means stay inside
  [σ(−1), σ(1)] and both logs are finite. The caller adds β·L to the BT loss (§6: β = 0.5).

  Args:
    h_pos, h_goal_pos: [N, D] positive states and their goal states, row by row.
    h_neg, h_goal_neg: [M, D] negative states and their goal states, row by row.

  Returns:
    scalar loss.
  """
  s_pos, g_pos = _matrix("h_pos", h_pos), _matrix("h_goal_pos", h_goal_pos)
  s_neg, g_neg = _matrix("h_neg", h_neg), _matrix("h_goal_neg", h_goal_neg)
  if s_pos.shape != g_pos.shape or s_neg.shape != g_neg.shape:
    raise ValueError(f"each state must match its goal's shape; got h_pos {s_pos.shape} vs "
                     f"h_goal_pos {g_pos.shape}, h_neg {s_neg.shape} vs h_goal_neg "
                     f"{g_neg.shape}")
  pos = jnp.mean(jax.nn.sigmoid(_cosine(s_pos, g_pos)))
  neg = jnp.mean(jax.nn.sigmoid(_cosine(s_neg, g_neg)))
  return -jnp.log(pos) - jnp.log1p(-neg)
