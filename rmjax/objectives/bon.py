"""Best-of-n: its KL, the unbiased estimator of its score for every n ≤ N, and Gao's fit.

Equations: ``docs/algorithms.md`` §3 (Gao et al. 2022; Coste et al. 2023). Best-of-n
draws n responses from the reference policy and keeps the one the proxy objective ranks
highest. From N ≥ n samples per prompt, sorted ascending by the proxy (S_1 ≤ … ≤ S_N),

  E[R(best of n)] = Σ_{i=n}^{N} C(i−1, n−1) / C(N, n) · R(S_i),

the average of R(winner) over all C(N, n) subsets of size n: S_i wins exactly the subsets
whose other n − 1 members come from S_1..S_{i−1}. R may be the gold reward or the proxy
itself ("apply to gold and proxy alike"). Ties in the proxy are broken by sample index
(a stable sort: among equal proxies the later sample ranks higher), which for exchangeable
samples is the same as breaking them at random.

Sampling and scoring responses live in ``rmjax.rl.best_of_n``; this file is the math.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln

from rmjax.objectives import ensemble


def kl_bon(n):
  """KL(best-of-n ‖ reference) = log n − (n − 1)/n (§3). n [...] (>= 1) → float32 [...]."""
  n = jnp.asarray(n, jnp.float32)
  return jnp.log(n) - (n - 1.0) / n


def _sample_counts(num_samples: int, ns) -> np.ndarray:
  """``ns`` as a 1-D int64 array with every n in [1, num_samples], or a ValueError."""
  arr = np.atleast_1d(np.asarray(ns))
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(f"ns must be a non-empty 1-D list of sample counts; got shape {arr.shape}")
  if not np.all(arr == np.round(arr)) or arr.min() < 1 or arr.max() > num_samples:
    raise ValueError(f"ns must be integers in [1, N={num_samples}]; got {arr.tolist()}")
  return arr.astype(np.int64)


def best_of_n_weights(num_samples: int, ns) -> np.ndarray:
  """Weights w[n, i] = C(i−1, n−1) / C(N, n) of the i-th smallest sample (§3).

  Computed in log space with float64 ``gammaln`` on the host: the weights depend only on
  the static N and n's, and float32 log-gamma is too coarse for them (near N = 10,000,
  log Γ ≈ 8·10⁴ where float32 spacing is ~0.008, i.e. ~1% noise in every weight).

  Args:
    num_samples: N >= 1.
    ns: [M] sample counts, each in [1, N].

  Returns:
    float64 [M, N]; row n is zero below i = n and sums to 1 (Σ_{i=n}^{N} C(i−1, n−1)
    = C(N, n)). Memory is M·N: ask for the n's you plot, not every n ≤ 10⁴.
  """
  if int(num_samples) != num_samples or num_samples < 1:
    raise ValueError(f"num_samples={num_samples} must be an integer >= 1")
  n = _sample_counts(num_samples, ns)[:, None].astype(np.float64)
  i = np.arange(1, num_samples + 1, dtype=np.float64)[None, :]
  big_n = float(num_samples)
  log_choose_n = gammaln(big_n + 1) - gammaln(n + 1) - gammaln(big_n - n + 1)
  valid = i >= n
  k = np.where(valid, i - n + 1, 1.0)  # i − n + 1 >= 1 wherever the weight is used
  log_w = gammaln(i) - gammaln(n) - gammaln(k) - log_choose_n
  return np.where(valid, np.exp(np.where(valid, log_w, 0.0)), 0.0)


def best_of_n_estimate(proxy, scores, ns):
  """Unbiased estimate of the score of best-of-n under ``proxy``, for each requested n (§3).

  Args:
    proxy: [..., N] the objective best-of-n maximises (e.g. ``ensemble.combine`` output),
      N samples per prompt on the last axis.
    scores: [..., N] rewards of the same samples to average over the winners (gold or the
      proxy itself), or a pytree (e.g. dict) of such arrays, each estimated.
    ns: [M] sample counts n in [1, N] (concrete, e.g. [1, 2, 4, …, 4096]).

  Returns:
    [..., M] float32 estimates, in the structure of ``scores``. n = 1 is the mean over the
    N samples, n = N is the score of the proxy's argmax. Jit-able in proxy and scores.
  """
  proxy = jnp.asarray(proxy)
  if proxy.ndim < 1:
    raise ValueError(f"proxy must be [..., N] with N samples on the last axis; got {proxy.shape}")
  weights = jnp.asarray(best_of_n_weights(proxy.shape[-1], ns), jnp.float32)
  order = jnp.argsort(proxy, axis=-1, stable=True)

  def estimate(values):
    values = jnp.asarray(values)
    if values.shape != proxy.shape:
      raise ValueError(f"scores must have the proxy's shape {proxy.shape}; got {values.shape}")
    ranked = jnp.take_along_axis(values.astype(jnp.promote_types(values.dtype, jnp.float32)),
                                 order, axis=-1)
    # HIGHEST: an accelerator's default matmul precision may round float32 to TF32/bf16.
    return jnp.einsum("...i,mi->...m", ranked, weights, precision=jax.lax.Precision.HIGHEST)

  return jax.tree.map(estimate, scores)


def best_of_n_curves(member_rewards, gold, ns, objective: str = "mean", normalize: bool = True,
                     **objective_kwargs):
  """Gold and proxy score of best-of-n against KL_bon for one ensemble objective (§3).

  Members are first normalised to zero mean, unit std per member over all the given
  samples, which are reference-policy samples (best-of-n draws from the reference), as
  Coste et al. do; then combined by ``ensemble.combine(…, objective, **objective_kwargs)``.

  Args:
    member_rewards: [prompts, N, K] member rewards of N samples per prompt.
    gold: [prompts, N] gold rewards of the same samples.
    ns: [M] sample counts in [1, N].
    objective: an ``ensemble.OBJECTIVES`` name ("mean", "wco", "uwo", "brme", "single").
    normalize: apply the per-member normalisation first.

  Returns:
    dict(n=[M] int, kl=[M] KL_bon(n), proxy=[prompts, M], gold=[prompts, M]); proxy is in
    the (normalised) objective's units.
  """
  members = jnp.asarray(member_rewards)
  if members.ndim != 3 or jnp.shape(gold) != members.shape[:2]:
    raise ValueError(f"member_rewards must be [prompts, N, K] and gold [prompts, N]; got "
                     f"{members.shape} and {jnp.shape(gold)}")
  if normalize:
    members = ensemble.normalize(members, *ensemble.normalization_stats(members))
  proxy = ensemble.combine(members, objective, **objective_kwargs)
  ns = _sample_counts(members.shape[1], ns)
  est = best_of_n_estimate(proxy, {"proxy": proxy, "gold": gold}, ns)
  return {"n": ns, "kl": kl_bon(ns), **est}


def gao_bon(d, alpha, beta):
  """Gao et al.'s best-of-n form R(d) = d(α − βd), d = √KL (§3). d [...] → [...]."""
  d = np.asarray(d, np.float64)
  return d * (alpha - beta * d)


def fit_gao_bon(kl, gain):
  """Least-squares (α, β) of gain ≈ d(α − βd), d = √KL (§3, Gao et al.'s BoN form).

  Fit to the gain over the reference policy, gold(n) − gold(1), so that R(0) = 0 (§3, "Gao
  fits"); no intercept. The model is linear in (α, β) on the features (d, −d²), so this is
  ordinary linear least squares in closed form. numpy float64: post-processing of
  estimated curves, never traced.

  Args:
    kl: [M] KL_bon values (>= 0), e.g. ``kl_bon(ns)``.
    gain: [M] gains at those KLs.

  Returns:
    (alpha, beta) Python floats.
  """
  kl, gain = np.asarray(kl, np.float64), np.asarray(gain, np.float64)
  if kl.ndim != 1 or kl.shape != gain.shape:
    raise ValueError(f"kl and gain must be [M] of one shape; got {kl.shape} and {gain.shape}")
  if np.any(kl < 0) or not np.all(np.isfinite(kl)) or not np.all(np.isfinite(gain)):
    raise ValueError("kl must be finite and >= 0 and gain finite")
  d = np.sqrt(kl)
  features = np.stack([d, -d * d], axis=-1)
  if np.linalg.matrix_rank(features) < 2:
    raise ValueError(f"need at least two distinct KL > 0 to fit α and β; got kl={kl.tolist()}")
  (alpha, beta), *_ = np.linalg.lstsq(features, gain, rcond=None)
  return float(alpha), float(beta)
