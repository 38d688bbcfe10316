"""Reward-model steps: pure functions of (state, batch), jitted once by the trainer.

The train state is a dict ``{"params": ..., "opt_state": optax state, "step": int32[]}``,
its params the model's ``nnx.State``, or ``{"model": <that state>, ...}`` when the loss has
parameters of its own (SwAV's prototypes; ``model_params``, ``loss_params``); batches use
the keys of ``rmjax.data.schema``. For an ensemble (``rmjax.rm.members``) the params and optimizer state of separate members are
stacked [K, ...] and so is their batch [K, B, ...]; a shared backbone's K heads take one
batch [B, ...] with per-head pair weights "head_weight" [B, K].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rmjax.data import schema, shared_prompt
from rmjax.models import lora
from rmjax.models.transformer import last_token_index
from rmjax.objectives import bt
from rmjax.objectives import gaussian as gaussian_lib
from rmjax.rm import members as ensemble
from rmjax.runtime import loop

HEAD_WEIGHT = "head_weight"  # [B, K] per-head pair weights of a shared-backbone ensemble
# Per-pair loss settings a batch may carry (``rmjax.rm.strength``), overriding loss_cfg:
LABEL_SMOOTHING = "label_smoothing"  # [B] α
ADAPTIVE_MARGIN = "adaptive_margin"  # [B] margin inside −log σ(Δ − m), replacing "margin"
MODEL = "model"  # the model's part of params that also hold the loss's own parameters


def _wrapped(params) -> bool:
  return isinstance(params, dict) and MODEL in params


def model_params(params):
  """The model's ``nnx.State`` of a run's params (themselves, unless the loss has
  parameters of its own next to the model's)."""
  return params[MODEL] if _wrapped(params) else params


def loss_params(params) -> dict:
  """The parameters the loss holds next to the model's (e.g. "prototypes"); {} if none."""
  return {k: v for k, v in params.items() if k != MODEL} if _wrapped(params) else {}


def pair_rewards(model, batch) -> tuple[jax.Array, jax.Array]:
  """Scores of both sides with the first reward head: (r_chosen [B], r_rejected [B])."""
  r_chosen, r_rejected = pair_head_rewards(model, batch)
  return r_chosen[:, 0], r_rejected[:, 0]


def pair_head_rewards(model, batch) -> tuple[jax.Array, jax.Array]:
  """Scores of both sides with every reward head: (r_chosen [B, H], r_rejected [B, H])."""
  h_chosen, h_rejected = pair_hidden(model, batch)
  return model.reward_scores(h_chosen), model.reward_scores(h_rejected)


def pair_hidden(model, batch, dropout_key=None, chosen_extra=None):
  """Final hidden states the reward head reads: (h_chosen [B, D], h_rejected [B, D]).

  A packed batch (``shared_prompt.pack``) is encoded once per pair, prompt shared;
  otherwise chosen and rejected sequences go through the backbone as 2B rows. Only
  the positions the reward head reads go through the last block (``read_at``).
  ``dropout_key``: run with the model's dropout (``ModelConfig.dropout_rate``).
  ``chosen_extra`` int [B]: one more position per pair to read in the same pass (an
  index into the packed row, or into the chosen row of a plain batch); its states
  [B, D] are then returned third: (h_chosen, h_rejected, h_extra).
  """
  if "packed_tokens" in batch:
    segments = batch["packed_segments"]
    reads = [batch["chosen_last"], batch["rejected_last"]]
    if chosen_extra is not None:
      reads.append(chosen_extra)
    hidden, _ = model(batch["packed_tokens"], segments != shared_prompt.PAD_SEGMENT,
                      positions=batch["packed_positions"], dropout_key=dropout_key,
                      attn_mask=shared_prompt.attention_mask(segments),
                      read_at=jnp.stack(reads, axis=1))
    return tuple(hidden[:, i] for i in range(len(reads)))
  tokens = jnp.concatenate([batch[schema.CHOSEN_TOKENS], batch[schema.REJECTED_TOKENS]])
  mask = jnp.concatenate([batch[schema.CHOSEN_MASK], batch[schema.REJECTED_MASK]])
  last = last_token_index(mask)
  half = tokens.shape[0] // 2
  if chosen_extra is None:
    hidden, _ = model(tokens, mask, dropout_key=dropout_key, read_at=last[:, None])
    return hidden[:half, 0], hidden[half:, 0]
  # Rejected rows read their last token twice, so that every row reads two positions.
  extra = jnp.concatenate([chosen_extra, last[half:]])
  hidden, _ = model(tokens, mask, dropout_key=dropout_key,
                    read_at=jnp.stack([last, extra], axis=1))
  return hidden[:half, 0], hidden[half:, 0], hidden[:half, 1]


def make_loss_fn(graphdef, loss_cfg, aux_loss=None, gaussian: bool = False):
  """``loss_fn(params, batch, key) -> (loss, aux)``: the reward model's training loss.

  ``loss_cfg``: label_smoothing, center_coef, score_reg_coef, use_margin. A batch may
  carry per-pair "label_smoothing" and "adaptive_margin" [B] (the strength options of
  ``rmjax.rm.strength``), which replace ``loss_cfg.label_smoothing`` and the margin. A model with H > 1 heads (a shared-backbone
  ensemble) averages the heads' Bradley–Terry losses, head h weighing pair i by
  ``weight[i] * head_weight[i, h]`` when the batch has "head_weight".

  ``gaussian``: the model's reward head holds H means then H log-stds
  (``members.split_columns``), and each head's loss is the Gaussian preference NLL
  (``objectives.gaussian.gaussian_preference_loss``, the same options) instead of BT.

  ``aux_loss(model, params, batch, key, h_chosen, h_rejected) -> (loss, metrics)``: an
  auxiliary term added to the BT loss (a contrastive loss); it gets its own parameters
  (``loss_params``) and the hidden states the BT loss used. ``key`` drives dropout
  (identity at ``dropout_rate`` 0) and ``aux_loss``.

  ``aux``: "losses" [H] per-head losses, "r_chosen"/"r_rejected" [B, H] (Gaussian heads:
  the means), "std" [H] each head's mean predicted std over both sides (Gaussian heads
  only) and "metrics", a dict of the auxiliary term's scalars.
  """
  options = dict(center_coef=loss_cfg.center_coef, score_reg_coef=loss_cfg.score_reg_coef)

  def head_loss(r_chosen, r_rejected, margin, weight, smoothing):
    loss, _ = bt.bradley_terry_loss(r_chosen, r_rejected, margin=margin, weight=weight,
                                    label_smoothing=smoothing, **options)
    return loss

  def gaussian_head_loss(mu_c, mu_r, log_std_c, log_std_r, margin, weight, smoothing):
    loss, _ = gaussian_lib.gaussian_preference_loss(
        mu_c, mu_r, log_std_c, log_std_r, margin=margin, weight=weight,
        label_smoothing=smoothing, **options)
    return loss

  def loss_fn(params, batch, key):
    model = nnx.merge(graphdef, model_params(params))
    dropout_key, aux_key = jax.random.split(key)
    h_chosen, h_rejected = pair_hidden(model, batch, dropout_key)
    s_chosen, s_rejected = model.reward_scores(h_chosen), model.reward_scores(h_rejected)
    margin = batch[schema.MARGIN] if loss_cfg.use_margin else None
    margin = batch.get(ADAPTIVE_MARGIN, margin)
    smoothing = batch.get(LABEL_SMOOTHING, loss_cfg.label_smoothing)
    (r_chosen, log_std_c), (r_rejected, log_std_r) = (
        ensemble.split_columns(s, gaussian) for s in (s_chosen, s_rejected))
    weight = batch[schema.WEIGHT][:, None] * batch.get(HEAD_WEIGHT, 1.0)
    weight = jnp.broadcast_to(weight, r_chosen.shape)
    out = {}
    if gaussian:
      losses = jax.vmap(gaussian_head_loss, in_axes=(1, 1, 1, 1, None, 1, None))(
          r_chosen, r_rejected, log_std_c, log_std_r, margin, weight, smoothing)
      stds = gaussian_lib.std(jnp.concatenate([log_std_c, log_std_r]))
      out["std"] = jnp.mean(stds, axis=0)
    else:
      losses = jax.vmap(head_loss, in_axes=(1, 1, None, 1, None))(
          r_chosen, r_rejected, margin, weight, smoothing)
    loss, metrics = jnp.mean(losses), {}
    if aux_loss is not None:
      extra, metrics = aux_loss(model, loss_params(params), batch, aux_key, h_chosen,
                                h_rejected)
      loss = loss + extra
    return loss, {"losses": losses, "r_chosen": r_chosen, "r_rejected": r_rejected,
                  "metrics": metrics, **out}

  return loss_fn


def batch_metrics(aux) -> dict:
  """Training metrics of a ``loss_fn`` aux: per-head [H] (scalars for one head)."""
  per_head = lambda fn: jax.vmap(fn, in_axes=(1, 1))(aux["r_chosen"], aux["r_rejected"])
  metrics = {"loss": aux["losses"], "accuracy": per_head(bt.pairwise_accuracy),
             "margin": per_head(bt.mean_margin)}
  if "std" in aux:
    metrics["std"] = aux["std"]
  metrics = jax.tree.map(lambda x: x[0] if x.shape[0] == 1 else x, metrics)
  return {**metrics, **aux["metrics"]}


def make_member_update(tx: optax.GradientTransformation, loss_fn):
  """One model's update ``(params, opt_state, batch, key) -> (params, opt_state, metrics)``:
  a gradient step on ``loss_fn`` (``make_loss_fn``)."""

  def update(params, opt_state, batch, key):
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {**batch_metrics(aux), "grad_norm": lora.grad_norm(grads)}

  return update


def make_train_step(graphdef, tx: optax.GradientTransformation, loss_cfg,
                    layout: ensemble.Layout = ensemble.SINGLE, member_devices: int = 1,
                    seed: int = 0, update=None):
  """``step(state, batch) -> (state, metrics)`` for ``layout``'s model(s).

  ``member_devices``: the mesh's ensemble-axis size (``ensemble.over_members``).
  ``update``: a member update (default: ``make_member_update`` on ``make_loss_fn``);
  its random key at step s is ``fold_in(key(seed of the member), s)``, the member
  seeds being ``ensemble.member_seeds(seed, K)``, so a resumed run draws the same.

  Metrics are scalars: for an ensemble, "loss", "accuracy", "margin" and "grad_norm"
  are means over members (the NaN check and progress line read them), and each member
  m adds "loss/m", "accuracy/m" and "margin/m" (and "grad_norm/m" when stacked).
  ``loop.FINITE`` says whether every updated parameter is finite (the loop stops on
  False before saving).
  """
  if update is None:
    update = make_member_update(tx, make_loss_fn(graphdef, loss_cfg))
  seeds = ensemble.member_seeds(seed, layout.k) if layout.stacked else [seed]
  if layout.stacked:  # each member its own params, optimizer state, batch and key
    update = ensemble.over_members(update, layout, member_devices)

  def step(state, batch):
    keys = jnp.stack([jax.random.fold_in(jax.random.key(s), state["step"]) for s in seeds])
    key = keys if layout.stacked else keys[0]
    params, opt_state, metrics = update(state["params"], state["opt_state"], batch, key)
    metrics = {**flatten_member_metrics(metrics, layout.k), loop.FINITE: loop.all_finite(params)}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

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


def make_eval_step(graphdef, layout: ensemble.Layout = ensemble.SINGLE,
                   member_devices: int = 1):
  """(params, batch) -> {"r_chosen", "r_rejected"}: float32 [B, K] member rewards of
  every pair (K = 1 for a single model; Gaussian heads: the means), with "std_chosen",
  "std_rejected" [B, K] the predicted stds of Gaussian heads; every member scores the same
  batch. ``params``: a run's params (the loss's own parameters are not read)."""

  def outputs(model, batch):
    out = {}
    for side, scores in zip(("chosen", "rejected"), pair_head_rewards(model, batch)):
      heads = ensemble.head_outputs(layout, scores)
      out[f"r_{side}"] = heads["reward"]
      if "std" in heads:
        out[f"std_{side}"] = heads["std"]
    return out

  def step(params, batch):
    return ensemble.apply_members(layout, graphdef, model_params(params),
                                  lambda model: outputs(model, batch), member_devices)

  return step
