"""The pretraining step: one AdamW update on the next-token loss, a pure function of
(state, batch) jitted once by ``rmjax.lm.trainer``.

The state is ``{"params": the model's nnx.State, "opt_state": optax state, "step":
int32[]}``; a batch is ``{"tokens": int32 [B, S], "mask": bool [B, S]}``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rmjax.objectives import language_model
from rmjax.runtime import loop

TOKENS, MASK = "tokens", "mask"


def model_logits(model, tokens, mask, dropout_key=None):
  """tokens, mask [B, S] -> float32 logits [B, S, V] of ``model`` (a Transformer)."""
  hidden, _ = model(tokens, mask, dropout_key=dropout_key)
  return model.logits(hidden)


def make_loss_fn(graphdef):
  """``loss_fn(params, batch, dropout_key) -> scalar`` mean next-token loss."""

  def loss_fn(params, batch, dropout_key):
    model = nnx.merge(graphdef, params)
    logits = model_logits(model, batch[TOKENS], batch[MASK], dropout_key)
    return language_model.next_token_loss(logits, batch[TOKENS], batch[MASK])

  return loss_fn


def make_train_step(graphdef, tx: optax.GradientTransformation, seed: int,
                    dropout: bool = False, loss_fn=None):
  """``step(state, batch) -> (state, metrics)``; metrics: loss, grad_norm and
  ``loop.FINITE`` over the updated parameters. ``dropout``: run the model's dropout with
  the key ``fold_in(key(seed), step)``, so a resumed run draws what an unbroken one would.
  ``loss_fn(params, batch, dropout_key)``: None = ``make_loss_fn(graphdef)`` (every token;
  supervised fine-tuning passes its response-only loss)."""
  loss_fn = loss_fn or make_loss_fn(graphdef)

  def step(state, batch):
    key = jax.random.fold_in(jax.random.key(seed), state["step"]) if dropout else None
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, key)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               loop.FINITE: loop.all_finite(params)}
    return {"params": params, "opt_state": opt_state,
            "step": state["step"] + jnp.ones((), jnp.int32)}, metrics

  return step
