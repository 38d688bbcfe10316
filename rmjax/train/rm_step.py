"""Reward-model steps: pure functions of (state, batch), jitted once by the trainer.

The train state is a dict ``{"params": nnx.State, "opt_state": optax state,
"step": int32[]}``; batches use the keys of ``rmjax.data.schema``. For an ensemble
(``rmjax.train.ensemble``) the params and optimizer state of separate members are
stacked [K, ...] and so is their batch [K, B, ...]; a shared backbone's K heads take one
batch [B, ...] with per-head pair weights "head_weight" [B, K].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rmjax.data import schema, shared_prompt
from rmjax.models.transformer import sequence_rewards
from rmjax.objectives import bt
from rmjax.train import ensemble

HEAD_WEIGHT = "head_weight"  # [B, K] per-head pair weights of a shared-backbone ensemble


def pair_rewards(model, batch) -> tuple[jax.Array, jax.Array]:
  """Scores of both sides with the first reward head: (r_chosen [B], r_rejected [B])."""
  r_chosen, r_rejected = pair_head_rewards(model, batch)
  return r_chosen[:, 0], r_rejected[:, 0]


def pair_head_rewards(model, batch) -> tuple[jax.Array, jax.Array]:
  """Scores of both sides with every reward head: (r_chosen [B, H], r_rejected [B, H]).

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
    rewards = model.reward_scores(hidden)  # [B, 2, H]
    return rewards[:, 0], rewards[:, 1]
  tokens = jnp.concatenate([batch[schema.CHOSEN_TOKENS], batch[schema.REJECTED_TOKENS]])
  mask = jnp.concatenate([batch[schema.CHOSEN_MASK], batch[schema.REJECTED_MASK]])
  rewards = sequence_rewards(model, tokens, mask)  # [2B, H]
  half = tokens.shape[0] // 2
  return rewards[:half], rewards[half:]


def make_member_update(graphdef, tx: optax.GradientTransformation, loss_cfg):
  """One model's update ``(params, opt_state, batch) -> (params, opt_state, metrics)``.

  ``loss_cfg``: label_smoothing, center_coef, score_reg_coef, use_margin. A model with
  H > 1 heads (a shared-backbone ensemble) averages the heads' Bradley–Terry losses,
  head h weighing pair i by ``weight[i] * head_weight[i, h]`` when the batch has
  "head_weight"; its per-head metrics are [H], the single head's are scalars.
  """

  def head_loss(r_chosen, r_rejected, margin, weight):
    loss, _ = bt.bradley_terry_loss(
        r_chosen, r_rejected, margin=margin, weight=weight,
        label_smoothing=loss_cfg.label_smoothing, center_coef=loss_cfg.center_coef,
        score_reg_coef=loss_cfg.score_reg_coef)
    return loss

  def loss_fn(params, batch):
    r_chosen, r_rejected = pair_head_rewards(nnx.merge(graphdef, params), batch)  # [B, H]
    margin = batch[schema.MARGIN] if loss_cfg.use_margin else None
    weight = batch[schema.WEIGHT][:, None] * batch.get(HEAD_WEIGHT, 1.0)
    weight = jnp.broadcast_to(weight, r_chosen.shape)
    losses = jax.vmap(head_loss, in_axes=(1, 1, None, 1))(r_chosen, r_rejected, margin, weight)
    return jnp.mean(losses), (losses, r_chosen, r_rejected)

  def update(params, opt_state, batch):
    (_, (losses, r_chosen, r_rejected)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    per_head = lambda fn: jax.vmap(fn, in_axes=(1, 1))(r_chosen, r_rejected)
    metrics = {"loss": losses, "accuracy": per_head(bt.pairwise_accuracy),
               "margin": per_head(bt.mean_margin)}
    metrics = jax.tree.map(lambda x: x[0] if x.shape[0] == 1 else x, metrics)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return params, opt_state, metrics

  return update


def make_train_step(graphdef, tx: optax.GradientTransformation, loss_cfg,
                    layout: ensemble.Layout = ensemble.Layout(), member_devices: int = 1):
  """``step(state, batch) -> (state, metrics)`` for ``layout``'s model(s).

  ``member_devices``: the mesh's ensemble-axis size (``ensemble.over_members``).

  Metrics are scalars: for an ensemble, "loss", "accuracy", "margin" and "grad_norm"
  are means over members (the NaN check and progress line read them), and each member
  m adds "loss/m", "accuracy/m" and "margin/m" (and "grad_norm/m" when stacked).
  """
  update = make_member_update(graphdef, tx, loss_cfg)
  if layout.stacked:  # each member its own params, optimizer state and batch
    update = ensemble.over_members(update, layout, member_devices)

  def step(state, batch):
    params, opt_state, metrics = update(state["params"], state["opt_state"], batch)
    return ({"params": params, "opt_state": opt_state, "step": state["step"] + 1},
            flatten_member_metrics(metrics, layout.k))

  return step


def flatten_member_metrics(metrics: dict, k: int) -> dict:
  """Per-member [K] metrics -> their mean under the name, and "name/m" per member."""
  if k == 1:
    return metrics
  out = {}
  for name, value in metrics.items():
    out[name] = jnp.mean(value)
    if jnp.ndim(value):
      out.update({f"{name}/{m}": value[m] for m in range(k)})
  return out


def make_eval_step(graphdef, layout: ensemble.Layout = ensemble.Layout(),
                   member_devices: int = 1):
  """(params, batch) -> {"r_chosen", "r_rejected"}: float32 [B, K] member rewards of
  every pair (K = 1 for a single model); every member scores the same batch."""

  def step(params, batch):
    r_chosen, r_rejected = ensemble.apply_members(
        layout, graphdef, params, lambda model: pair_head_rewards(model, batch),
        member_devices)
    return {"r_chosen": r_chosen, "r_rejected": r_rejected}

  return step
