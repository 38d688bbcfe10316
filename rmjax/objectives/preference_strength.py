"""Preference strength from a reward ensemble, and what the Secrets-II recipes do with it.

Pure functions of arrays. ``member_deltas`` holds Δ_m(i) = r_m(chosen_i) − r_m(rejected_i)
for N pairs and M members with the members on the LAST axis, ``[N, M]`` float, as
``ensemble.py`` keeps them (``[batch, K]``). Outputs are in (at least) float32. Equations:
``docs/algorithms.md`` §2 (Wang, Zheng et al. 2024): preference strength, label
flipping, label smoothing only where μ < 0, the adaptive margin and MetaRM's difference loss.

The losses themselves live in ``bt.py``: ``bradley_terry_loss`` already takes a per-pair
``margin`` and a per-pair ``label_smoothing`` (any array broadcastable to ``[batch]``), so
``adaptive_margin`` and ``smoothing_where_negative`` only build those arguments.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from rmjax.objectives.precision import at_least_f32


def _deltas(member_deltas):
  """``member_deltas`` as float [N, M] with M >= 1, or a ValueError naming the shape."""
  d = at_least_f32(member_deltas)
  if d.ndim != 2 or d.shape[1] < 1:
    raise ValueError(f"member_deltas must be [N, M] (pairs, members); got shape {d.shape}")
  return d


def _strength(mu_name, mu):
  """A [N] strength vector, or a ValueError naming it."""
  m = at_least_f32(mu)
  if m.ndim != 1:
    raise ValueError(f"{mu_name} must be [N]; got shape {m.shape}")
  return m


def _check_unit(name, value):
  """``value`` must be a real number in [0, 1]; traced values pass through unchecked."""
  if isinstance(value, numbers.Real) and not 0.0 <= value <= 1.0:
    raise ValueError(f"{name}={value} must be in [0, 1]")


def preference_strength(member_deltas):
  """Strength μ_i = mean_m Δ_m(i) and spread σ_i = population std_m Δ_m(i) (§2).

  Args:
    member_deltas: [N, M] Δ of every pair under every member.

  Returns:
    (mu [N], sigma [N]); σ divides by M, as the paper defines it.
  """
  d = _deltas(member_deltas)
  return jnp.mean(d, axis=-1), jnp.std(d, axis=-1)


def out_of_fold_strength(member_deltas, member_fold, pair_fold):
  """μ and σ of each pair over only the members that never saw it in training.

  A member that trained on a pair has memorised its label, noise included, so its Δ says
  little about whether the label is right. Cross-fitting: member m was trained on every
  fold except ``member_fold[m]``; pair i lies in fold ``pair_fold[i]``; pair i is scored by
  exactly the members with member_fold[m] == pair_fold[i]. Several members may share a
  held-out fold (e.g. seeds), and then they are averaged together.

  Args:
    member_deltas: [N, M] Δ of every pair under every member.
    member_fold: [M] int, the fold member m was trained without.
    pair_fold: [N] int, the fold pair i belongs to.

  Returns:
    (mu [N], sigma [N]) over the eligible members (population std).

  Raises:
    ValueError: on mismatched shapes, or if some pair has no eligible member (its fold is
      held out by no member), since it would have no out-of-fold strength at all.
  """
  d = _deltas(member_deltas)
  n, m = d.shape
  # Folds are bookkeeping, not data to trace, so they are checked eagerly on the host.
  mf, pf = np.asarray(member_fold), np.asarray(pair_fold)
  if mf.shape != (m,):
    raise ValueError(f"member_fold must be [M]={m}; got shape {mf.shape}")
  if pf.shape != (n,):
    raise ValueError(f"pair_fold must be [N]={n}; got shape {pf.shape}")
  eligible = pf[:, None] == mf[None, :]
  orphans = np.flatnonzero(~eligible.any(axis=1))
  if orphans.size:
    folds = sorted(set(pf[orphans].tolist()))
    raise ValueError(f"{orphans.size} pair(s) (first index {orphans[0]}) lie in pair_fold "
                     f"{folds} which no member_fold holds out; they have no out-of-fold member")
  w = jnp.asarray(eligible, d.dtype)
  count = jnp.sum(w, axis=-1)
  mu = jnp.sum(w * d, axis=-1) / count
  var = jnp.sum(w * (d - mu[:, None]) ** 2, axis=-1) / count
  return mu, jnp.sqrt(var)


def flip_lowest(mu, fraction=0.2):
  """Mask of the lowest-strength pairs, whose chosen/rejected labels are to be swapped (§2).

  Exactly round(fraction · N) pairs are flagged, rounding halves up (so the count never
  depends on Python's round-half-to-even); among equal μ the lower index is flipped first,
  so the choice is deterministic. The paper flips 20% in §2.4.1 and 10% in an appendix; the
  fraction is open, 0.2 by default.

  Args:
    mu: [N] strength.
    fraction: Python number in [0, 1].

  Returns:
    bool [N], True for the pairs to flip.
  """
  m = _strength("mu", mu)
  if not isinstance(fraction, numbers.Real):
    raise ValueError(f"fraction must be a Python number (it fixes a static count); got "
                     f"{type(fraction).__name__}")
  _check_unit("fraction", fraction)
  n = m.shape[0]
  count = int(np.floor(fraction * n + 0.5))
  order = jnp.argsort(m, stable=True)
  return jnp.zeros(n, bool).at[order[:count]].set(True)


def smoothing_where_negative(mu, alpha):
  """Per-pair label smoothing α_i = α where μ_i < 0 else 0 (§2's best recipe).

  Pass the result as ``label_smoothing`` to ``bt.bradley_terry_loss``, which then computes
  −[(1 − α_i) log σ(Δ) + α_i log(1 − σ(Δ))] pair by pair. The paper leaves α open.

  Args:
    mu: [N] strength.
    alpha: α in [0, 1].

  Returns:
    float [N].
  """
  m = _strength("mu", mu)
  _check_unit("alpha", alpha)
  return jnp.where(m < 0, at_least_f32(alpha), 0.0).astype(m.dtype)


def adaptive_margin(mu):
  """The adaptive margin m_i = μ_i of −log σ(Δ − μ_i) (§2), for ``bt`` ``margin=``.

  μ is a fixed target computed beforehand by the ensemble, so no gradient flows into it
  even if a caller computes it inside the same traced program.

  Args:
    mu: [N] strength.

  Returns:
    float [N].
  """
  return jax.lax.stop_gradient(_strength("mu", mu))


def metarm_difference_loss(rewards):
  """MetaRM's difference loss J = mean_prompts (2/k²) Σ_{i<j} σ(|r_i − r_j|) (§2, Alg. 1).

  MetaRM takes a gradient-ascent step on J, pushing the model to separate responses that
  the shifted policy produces for the same prompt. Each term is in [½, 1).

  Args:
    rewards: [P, k] rewards of k >= 2 responses to each of P prompts.

  Returns:
    scalar J.
  """
  r = at_least_f32(rewards)
  if r.ndim != 2 or r.shape[0] < 1 or r.shape[1] < 2:
    raise ValueError(f"rewards must be [P, k] with P >= 1 prompts and k >= 2 responses; got "
                     f"shape {r.shape}")
  k = r.shape[1]
  gaps = jnp.abs(r[:, :, None] - r[:, None, :])
  upper = jnp.triu(jnp.ones((k, k), bool), k=1)
  per_prompt = jnp.sum(jnp.where(upper, jax.nn.sigmoid(gaps), 0.0), axis=(1, 2))
  return jnp.mean(2.0 / k ** 2 * per_prompt)


def auroc(scores, positives):
  """Area under the ROC curve: P(score of a positive > score of a negative), ties ½.

  Higher scores should mean "positive". To ask how well strength finds flipped labels,
  pass ``scores = -mu`` and ``positives = flipped``. Computed on the host in float64 in
  O(N log N) (each positive counts the negatives below it by binary search), so it scales
  to whole datasets.

  Args:
    scores: [N] real.
    positives: [N] bool, with at least one positive and one negative.

  Returns:
    Python float in [0, 1].
  """
  s = np.asarray(scores, np.float64)
  y = np.asarray(positives)
  if s.ndim != 1:
    raise ValueError(f"scores must be [N]; got shape {s.shape}")
  if y.shape != s.shape or y.dtype != bool:
    raise ValueError(f"positives must be bool [N]={s.shape[0]}; got {y.dtype} {y.shape}")
  if not np.all(np.isfinite(s)):
    raise ValueError("scores must be finite")
  pos, neg = s[y], np.sort(s[~y])
  if pos.size == 0 or neg.size == 0:
    raise ValueError(f"positives must hold both classes; got {pos.size} positive(s) and "
                     f"{neg.size} negative(s)")
  below = np.searchsorted(neg, pos, side="left")
  tied = np.searchsorted(neg, pos, side="right") - below
  return float(np.sum(below + 0.5 * tied) / (pos.size * neg.size))
