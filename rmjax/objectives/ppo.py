"""PPO-max math: per-token rewards, GAE, whitening, the clipped policy and value losses.

Pure, jit-able functions of arrays. Token-level tensors are ``[B, T]`` (batch, response
time) with a bool ``mask`` [B, T] that is True on valid response tokens; responses are
right-padded. Outputs are in (at least) float32. Equations: ``docs/algorithms.md``
§5 (Secrets of RLHF, Part I, "PPO-max"). KL estimators and the β controller live in
``rmjax.objectives.kl``; running reward normalisation in ``rmjax.objectives.running_stats``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rmjax.objectives import kl as kl_lib
from rmjax.objectives.precision import at_least_f32


def masked_mean(x, mask):
  """Σ mask·x / Σ mask over all axes; 0 when no token is valid. [B, T] each → scalar."""
  m = jnp.asarray(mask, bool)
  count = jnp.sum(m)
  total = jnp.sum(jnp.where(m, at_least_f32(x), 0.0))
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


AGGREGATIONS = ("token_mean", "sequence_mean", "constant")


def aggregate(x, mask, how="token_mean"):
  """A per-token loss [B, T] reduced to a scalar over the valid tokens (``mask``):

    token_mean:     Σ_bt m·x / Σ_bt m            (PPO, REINFORCE++: every token weighs alike);
    sequence_mean:  mean_b (Σ_t m·x / Σ_t m)     (GRPO: every sequence weighs alike, so a
                                                  long response's tokens weigh less);
    constant:       Σ_bt m·x / (B · T)           (Dr. GRPO, RLOO: the sum over tokens divided
                                                  by a constant, no length bias).

  A row with no valid token contributes 0 (and counts in B for sequence_mean and constant).
  """
  if how not in AGGREGATIONS:
    raise ValueError(f"loss aggregation must be one of {AGGREGATIONS}; got {how!r}")
  m = jnp.asarray(mask, bool)
  x = jnp.where(m, at_least_f32(x), 0.0)
  if how == "token_mean":
    return masked_mean(x, m)
  if how == "constant":
    return jnp.sum(x) / (m.shape[0] * m.shape[1])
  per_row = jnp.sum(x, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1)
  return jnp.mean(per_row)


def per_token_rewards(score, logprobs, ref_logprobs, mask, kl_coef, estimator="k1"):
  """r_t = −β · KL_t on every valid token, plus the score on each sequence's last one (§5).

  The score is the already-processed sequence reward (ensemble objective → transform →
  running normalisation → clip). A row with no valid token gets all zeros.

  Args:
    score: [B] processed scores.
    logprobs, ref_logprobs: [B, T] log π_θ (the sampling policy's own, untruncated) and
      log π_ref of the sampled tokens.
    mask: bool [B, T].
    kl_coef: scalar β (e.g. ``KLController.beta``).
    estimator: "k1", "k2" or "k3", see ``rmjax.objectives.kl`` (static).

  Returns:
    float [B, T], zero where mask is False.
  """
  m = jnp.asarray(mask, bool)
  t = m.shape[-1]
  penalty = -at_least_f32(kl_coef) * kl_lib.kl_per_token(logprobs, ref_logprobs, estimator)
  last = t - 1 - jnp.argmax(m[:, ::-1], axis=-1)
  at_last = (jnp.arange(t)[None, :] == last[:, None]) & m
  return jnp.where(m, penalty, 0.0) + jnp.where(at_last, at_least_f32(score)[:, None], 0.0)


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
  """Generalised advantage estimation over each response, as a reverse ``lax.scan`` (§5).

    δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1},   R_t = A_t + V_t,

  where V_{t+1} and A_{t+1} are 0 after the last valid token (the episode ends there; more
  generally any masked token ends the trajectory before it). §5 uses γ = 1, λ = 0.95.

  Args:
    rewards, values: [B, T] per-token rewards and critic values V(s_t).
    mask: bool [B, T].
    gamma, lam: scalars γ and λ.

  Returns:
    (advantages [B, T], returns [B, T]), both zero where mask is False.
  """
  m = jnp.asarray(mask, bool)
  r = jnp.where(m, at_least_f32(rewards), 0.0)
  v = jnp.where(m, at_least_f32(values), 0.0)
  next_v = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)
  delta = r + gamma * next_v - v

  def step(next_adv, xs):
    delta_t, m_t = xs
    adv = jnp.where(m_t, delta_t + gamma * lam * next_adv, 0.0)
    return adv, adv

  _, adv = jax.lax.scan(step, jnp.zeros_like(delta[:, 0]), (delta.T, m.T), reverse=True)
  adv = adv.T
  return adv, jnp.where(m, adv + v, 0.0)


def whiten(x, mask, eps=1e-6, shift_mean=True, clip=None):
  """Whitening over the valid tokens of the whole batch (§5: eps 1e-6, optional clip 0.5).

    x̂ = (x − μ) / √(σ² + eps),   μ, σ² = mean and population variance over mask,

  then, if ``shift_mean`` is False, μ is added back (scale only); then, if ``clip`` is set,
  x̂ is clipped to [−clip, clip]. trl/trlx use the n − 1 variance; the difference is a factor
  √(n/(n−1)) over thousands of tokens.

  Args:
    x: [B, T] (e.g. advantages); mask: bool [B, T].
    eps: added to the variance. shift_mean: static bool. clip: None or c > 0 (static).

  Returns:
    float [B, T], zero where mask is False.
  """
  m = jnp.asarray(mask, bool)
  x = at_least_f32(x)
  mean = masked_mean(x, m)
  var = masked_mean((x - mean) ** 2, m)
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  if clip is not None:
    out = jnp.clip(out, -clip, clip)
  return jnp.where(m, out, 0.0)


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2,
                aggregation="token_mean"):
  """PPO clipped surrogate over valid tokens (§5, ε = 0.2), reduced by ``aggregate``.

    ρ_t = exp(log π_θ − log π_old),   ℓ_t = max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε)).

  ``old_logprobs`` and ``advantages`` are targets: no gradient flows into them.

  Args:
    logprobs: [B, T] log π_θ of the sampled tokens under the current parameters.
    old_logprobs: [B, T] log π_old, the sampling policy's own (untruncated) log-probs.
    advantages: [B, T] (usually whitened). mask: bool [B, T].
    clip_eps: ε. aggregation: one of ``AGGREGATIONS`` (static).

  Returns:
    (loss scalar, metrics) with metrics, all masked token means:
      "clip_fraction": share of tokens where the clipped term is the larger (active) one;
      "approx_kl": k3 estimate of KL(π_old ‖ π_θ), mean of (ρ − 1) − log ρ (≥ 0);
      "ratio_mean": mean ρ.
  """
  log_ratio = at_least_f32(logprobs) - jax.lax.stop_gradient(at_least_f32(old_logprobs))
  adv = jax.lax.stop_gradient(at_least_f32(advantages))
  ratio = jnp.exp(log_ratio)
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  loss = aggregate(jnp.maximum(unclipped, clipped), mask, aggregation)
  log_ratio = jax.lax.stop_gradient(log_ratio)
  metrics = {
      "clip_fraction": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
      "approx_kl": masked_mean(jnp.expm1(log_ratio) - log_ratio, mask),
      "ratio_mean": masked_mean(jnp.exp(log_ratio), mask),
  }
  return loss, metrics


def value_loss(values, old_values, returns, mask, clip=0.2):
  """Clipped value loss ½ max((V − R)², (clip(V, V_old − c, V_old + c) − R)²), token mean (§5).

  Args:
    values: [B, T] V under the current parameters.
    old_values: [B, T] V at rollout time; returns: [B, T] R from ``gae`` (both targets, no
      gradient). mask: bool [B, T]. clip: c (§5: 0.2), or None for the plain ½ (V − R)².

  Returns:
    scalar loss.
  """
  v = at_least_f32(values)
  ret = jax.lax.stop_gradient(at_least_f32(returns))
  loss = (v - ret) ** 2
  if clip is not None:
    old = jax.lax.stop_gradient(at_least_f32(old_values))
    loss = jnp.maximum(loss, (jnp.clip(v, old - clip, old + clip) - ret) ** 2)
  return 0.5 * masked_mean(loss, mask)


def entropy_from_logits(logits, mask):
  """Mean per-token entropy H_t = −Σ_v p_v log p_v of softmax(logits) over valid tokens.

  Computed from ``log_softmax`` (shifted by the max, so large logits do not overflow); a
  −inf logit has p = 0 and contributes 0, not NaN. §5 keeps the entropy bonus off; this is
  the diagnostic.

  Args:
    logits: [B, T, V]; mask: bool [B, T].

  Returns:
    scalar.
  """
  logp = jax.nn.log_softmax(at_least_f32(logits), axis=-1)
  p = jnp.exp(logp)
  ent = -jnp.sum(p * jnp.where(p > 0, logp, 0.0), axis=-1)
  return masked_mean(ent, mask)
