"""Reward-model steps: pure functions of (state, batch), jitted once by the trainer.

The train state is a dict ``{"params": nnx.State, "opt_state": optax state,
"step": int32[]}``; batches use the keys of ``rmjax.data.schema``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rmjax.data import schema, shared_prompt
from rmjax.models.transformer import last_token_index
from rmjax.objectives import bt


def pair_rewards(model, batch) -> tuple[jax.Array, jax.Array]:
  """Scores of both sides with the first reward head: (r_chosen [B], r_rejected [B]).

  A packed batch (``shared_prompt.pack``) is encoded once per pair, prompt shared;
  otherwise chosen and rejected sequences go through the backbone as 2B rows. Only
  the positions the reward head reads go through the last block (``read_at``).
  """
  if "packed_tokens" in batch:
    segments = batch["packed_segments"]
    last = jnp.stack([batch["chosen_last"], batch["rejected_last"]], axis=1)
    hidden, _ = model(batch["packed_tokens"], segments != shared_prompt.PAD_SEGMENT,
                      positions=batch["packed_positions"],
                      attn_mask=shared_prompt.attention_mask(segments), read_at=last)
    rewards = model.reward_scores(hidden)[:, :, 0]
    return rewards[:, 0], rewards[:, 1]
  tokens = jnp.concatenate([batch[schema.CHOSEN_TOKENS], batch[schema.REJECTED_TOKENS]])
  mask = jnp.concatenate([batch[schema.CHOSEN_MASK], batch[schema.REJECTED_MASK]])
  hidden, _ = model(tokens, mask, read_at=last_token_index(mask)[:, None])
  rewards = model.reward_scores(hidden[:, 0])[:, 0]
  half = tokens.shape[0] // 2
  return rewards[:half], rewards[half:]


def make_train_step(graphdef, tx: optax.GradientTransformation, loss_cfg):
  """``loss_cfg``: label_smoothing, center_coef, score_reg_coef, use_margin."""

  def loss_fn(params, batch):
    r_chosen, r_rejected = pair_rewards(nnx.merge(graphdef, params), batch)
    margin = batch[schema.MARGIN] if loss_cfg.use_margin else None
    loss, aux = bt.bradley_terry_loss(
        r_chosen, r_rejected, margin=margin, weight=batch[schema.WEIGHT],
        label_smoothing=loss_cfg.label_smoothing, center_coef=loss_cfg.center_coef,
        score_reg_coef=loss_cfg.score_reg_coef)
    return loss, (r_chosen, r_rejected)

  def step(state, batch):
    (loss, (r_chosen, r_rejected)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], batch)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "accuracy": bt.pairwise_accuracy(r_chosen, r_rejected),
               "margin": bt.mean_margin(r_chosen, r_rejected),
               "grad_norm": optax.tree.norm(grads)}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return step


def make_eval_step(graphdef):
  """(params, batch) -> per-pair rewards and response lengths, for host-side metrics."""

  def step(params, batch):
    r_chosen, r_rejected = pair_rewards(nnx.merge(graphdef, params), batch)
    return {"r_chosen": r_chosen, "r_rejected": r_rejected}

  return step
