"""The RL trainer's compiled pieces: the rollout's forward passes and the minibatch update
of every ``rl.algorithm`` (``rmjax.rl.algorithms``).

Episodes are the sampler's output (``rmjax.models.sampler``): the prompt packed to the left
of a block of width P, then the response right-padded to N new tokens, so response token t
sits at column P + t and is predicted from column P − 1 + t. ``response_logprobs`` and
``response_values`` read exactly those N columns: log π(token t | prefix) under the
temperature-scaled softmax (the sampler's own log-probs), and the critic's value V(s_t) of
the state before token t.

The update is a pure ``step(state, batch) -> (state, metrics)`` over a minibatch of
episodes, jitted once with explicit shardings (``rmjax.parallel.compile_step``):
``state = {"actor", "actor_opt", "step"}`` plus "critic" and "critic_opt" with a critic (the
model part of the trainer's carry); batch keys in
``episode_keys``. Actor and critic (PPO only) are separate networks with separate
optimizers; one gradient pass serves both (their parameters are disjoint).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rmjax.models import lora
from rmjax.objectives import kl as kl_lib
from rmjax.objectives import language_model, ppo
from rmjax.runtime import loop

EPISODE_KEYS = ("tokens", "mask", "response_mask", "old_logprobs", "old_values",
                "advantages", "returns")


def _response_hidden(model, tokens, mask, prompt_width: int):
  """Hidden states [B, N, D] at the columns that predict the N response tokens; the last
  block runs only there (``read_at``), as nothing reads the prompt's other columns."""
  batch, width = tokens.shape
  columns = jnp.arange(prompt_width - 1, width - 1)
  hidden, _ = model(tokens, mask, read_at=jnp.broadcast_to(columns, (batch, columns.size)))
  return hidden


def response_logprobs(model, tokens, mask, prompt_width: int, temperature: float = 1.0):
  """(log-probs [B, N] of the response tokens, logits [B, N, V] float32) under ``model``.

  tokens, mask [B, P + N]: prompt block of width ``prompt_width`` then the response.
  """
  logits = model.logits(_response_hidden(model, tokens, mask, prompt_width)) / temperature
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  chosen = jnp.take_along_axis(logprobs, tokens[:, prompt_width:, None], axis=-1)[..., 0]
  return chosen, logits


def response_values(critic, tokens, mask, prompt_width: int):
  """Critic values [B, N]: V(s_t) of the state before each response token."""
  return critic.values(_response_hidden(critic, tokens, mask, prompt_width))


def language_model_loss(model, tokens, mask):
  """Mean next-token negative log-likelihood over the real tokens after each row's first
  (PPO-ptx's pretraining loss). tokens, mask [B, S] (left or right padded)."""
  hidden, _ = model(tokens, mask)
  return language_model.next_token_loss(model.logits(hidden), tokens, mask)


def episode_keys(s) -> tuple[str, ...]:
  """The minibatch keys of ``s`` (``algorithms.Settings``): ``EPISODE_KEYS`` with a critic;
  without one no values or returns; with the KL in the loss, the reference's log-probs and
  each episode's β ("kl_coef", [B])."""
  keys = EPISODE_KEYS if s.critic else tuple(k for k in EPISODE_KEYS
                                             if k not in ("old_values", "returns"))
  return keys + (("ref_logprobs", "kl_coef") if s.kl_placement == "loss" else ())


def make_losses(actor_graphdef, critic_graphdef, prompt_width: int, cfg, s):
  """``losses(params, batch) -> (total, metrics)`` with params {"actor"} (and "critic"
  when ``s.critic``): the clipped surrogate reduced by ``s.aggregation`` −
  entropy_coef · entropy, + the clipped value loss with a critic (§5), + β · the
  ``s.kl_estimator`` KL to the reference (same reduction) when ``s.kl_placement`` is
  "loss" (GRPO), + ptx_coef · the language-model loss on "ptx_tokens"/"ptx_mask" when the
  batch has them (PPO-ptx).

  ``cfg``: temperature, clip_eps, value_clip, entropy_coef, ptx_coef (the ``rl`` section);
  ``s``: the run's ``algorithms.Settings``. Metrics: policy_loss, entropy, clip_fraction,
  approx_kl, ratio_mean (and value_loss, kl_loss, ptx_loss).
  """

  def losses(params, batch):
    actor = nnx.merge(actor_graphdef, params["actor"])
    tokens, mask, m = batch["tokens"], batch["mask"], batch["response_mask"]
    logprobs, logits = response_logprobs(actor, tokens, mask, prompt_width, cfg.temperature)
    policy, metrics = ppo.policy_loss(logprobs, batch["old_logprobs"], batch["advantages"], m,
                                      cfg.clip_eps, s.aggregation)
    entropy = ppo.entropy_from_logits(logits, m)
    total = policy - cfg.entropy_coef * entropy
    metrics = {**metrics, "policy_loss": policy, "entropy": entropy}
    if s.critic:
      critic = nnx.merge(critic_graphdef, params["critic"])
      values = response_values(critic, tokens, mask, prompt_width)
      metrics["value_loss"] = ppo.value_loss(values, batch["old_values"], batch["returns"], m,
                                             cfg.value_clip)
      total = total + metrics["value_loss"]
    if s.kl_placement == "loss":
      per_token = kl_lib.kl_per_token(logprobs, batch["ref_logprobs"], s.kl_estimator)
      metrics["kl_loss"] = ppo.aggregate(per_token, m, s.aggregation)
      total = total + jnp.mean(batch["kl_coef"]) * metrics["kl_loss"]
    if "ptx_tokens" in batch:
      metrics["ptx_loss"] = language_model_loss(actor, batch["ptx_tokens"], batch["ptx_mask"])
      total = total + cfg.ptx_coef * metrics["ptx_loss"]
    return total, metrics

  return losses


def make_update(actor_graphdef, critic_graphdef, actor_tx: optax.GradientTransformation,
                critic_tx: optax.GradientTransformation | None, prompt_width: int, cfg, s):
  """The minibatch update ``step(state, batch) -> (state, metrics)`` of ``s``
  (``algorithms.Settings``): ``make_losses``' metrics plus actor_grad_norm (and
  critic_grad_norm) and ``loop.FINITE`` (every updated parameter is finite, checked on
  device). Without a critic the state has no "critic" or "critic_opt"."""
  losses = make_losses(actor_graphdef, critic_graphdef, prompt_width, cfg, s)
  models = ("actor", "critic") if s.critic else ("actor",)
  txs = {"actor": actor_tx, "critic": critic_tx}

  def step(state, batch):
    params = {name: state[name] for name in models}
    grads, metrics = jax.grad(losses, has_aux=True)(params, batch)
    new = dict(state, step=state["step"] + 1)
    for name in models:
      updates, new[f"{name}_opt"] = txs[name].update(grads[name], state[f"{name}_opt"],
                                                     state[name])
      new[name] = optax.apply_updates(state[name], updates)
      metrics[f"{name}_grad_norm"] = lora.grad_norm(grads[name])
    metrics[loop.FINITE] = loop.all_finite({name: new[name] for name in models})
    return new, metrics

  return step
