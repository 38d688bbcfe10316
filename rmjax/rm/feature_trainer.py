"""Training a reward model's top (last n blocks, final norm, reward head) on cached features.

``TopModel`` wraps the top modules of a ``Transformer`` (shared, not copied: training it
trains the full model in place) and takes cached block inputs where the full model takes
tokens. Batches keep the schema's keys, with CHOSEN_TOKENS/REJECTED_TOKENS holding the
cached features [batch, width, d_model] instead of token ids, so the existing
``rm_step`` steps, ``rm.evaluate`` and the metrics run unchanged. The trained
full model (frozen prefix included) is saved in ``train-rm``'s checkpoint layout, so
``rmjax eval-rm``, ``rmjax score`` and ``load_rm`` read it like any other run. A run on
cached features takes seconds to minutes, so only that final model is saved: there is no
mid-run checkpoint to resume from.
"""

from __future__ import annotations

import contextlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rmjax import parallel
from rmjax.data import schema
from rmjax.data.array_source import ArraySource
from rmjax.models.transformer import Transformer, attention_mask, default_positions
from rmjax.rm import contrastive_terms, feature_cache
from rmjax.rm.evaluate import evaluate
from rmjax.rm.step import make_eval_step, make_train_step
from rmjax.runtime import loop
from rmjax.runtime.checkpoint import Checkpointer, provenance
from rmjax.runtime.metrics import MetricsWriter, Progress
from rmjax.runtime.optim import make_optimizer
from rmjax.runtime.plots import plot_training_curves


class TopModel(nnx.Module):
  """Blocks ``start..L-1``, the final norm and the reward head of ``model``, shared.

  ``start == L`` (n = 0): the input is each sequence's last-token hidden state
  [batch, 1, d_model] and only the final norm and head act on it.
  """

  def __init__(self, model: Transformer, start: int):
    self.cfg = model.cfg
    self.head_only = start == model.cfg.n_layers
    self.blocks = nnx.List([model.blocks[i] for i in range(start, model.cfg.n_layers)])
    self.final_norm = model.final_norm
    self.reward_head = model.reward_head

  def __call__(self, features: jax.Array, mask: jax.Array, read_at: jax.Array | None = None,
               dropout_key: jax.Array | None = None):
    """features [b, w, d_model] (block ``start``'s input), mask [b, seq] -> (hidden, None).

    ``read_at`` [b, n] as in ``Transformer.__call__``: the last block outputs only these
    rows. Last-token features (n = 0) are already the one row a reward head reads.
    ``dropout_key``: the trained blocks' dropout, as ``Transformer.run_blocks`` draws it.
    """
    x = features.astype(self.cfg.compute_dtype)
    if not self.head_only:
      positions = default_positions(mask)
      attn = attention_mask(mask, None, mask.shape[1])
      for i, block in enumerate(self.blocks):
        last = i == len(self.blocks) - 1
        key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
        x, _ = block(x, positions, attn, None, key, read_at if last else None)
    return self.final_norm(x), None

  def reward_scores(self, hidden: jax.Array) -> jax.Array:
    """hidden [..., d_model] at the read positions -> [..., K] rewards."""
    return Transformer.reward_scores(self, hidden)


def pair_arrays(entry: feature_cache.Entry) -> dict[str, np.ndarray]:
  """An entry as schema batch arrays, features under CHOSEN/REJECTED_TOKENS (views)."""
  pairs = len(entry.arrays[schema.MARGIN])
  out = {k: v for k, v in entry.arrays.items()
         if k not in (schema.CHOSEN_TOKENS, schema.REJECTED_TOKENS)}
  out[schema.CHOSEN_TOKENS] = entry.features[:pairs]
  out[schema.REJECTED_TOKENS] = entry.features[pairs:]
  return out


def trim(batch: dict[str, np.ndarray], step: int = 32) -> dict[str, np.ndarray]:
  """Cuts full-sequence features and masks to the batch's longest row (rounded up to
  ``step``): padding costs the suffix blocks as much as real tokens."""
  if batch[schema.CHOSEN_TOKENS].shape[1] == 1:  # last-token features: nothing to cut
    return batch
  longest = max(int(batch[k].sum(1).max()) for k in (schema.CHOSEN_MASK, schema.REJECTED_MASK))
  width = min(batch[schema.CHOSEN_MASK].shape[1], -(-longest // step) * step)
  keys = (schema.CHOSEN_TOKENS, schema.REJECTED_TOKENS, schema.CHOSEN_MASK,
          schema.REJECTED_MASK)
  return {k: v[:, :width] if k in keys else v for k, v in batch.items()}


def train_top(model: Transformer, start: int, train: dict, evaluation: dict, config,
              workdir: str, mesh) -> dict:
  """Train ``TopModel(model, start)`` on ``pair_arrays`` dicts; ``model`` is updated in place.

  ``config``: seed, optim (``make_optimizer`` fields), loss (``rm_step``), train (steps,
  batch_size, log_every, eval_every). Runs on ``rmjax.runtime.loop.run`` (its finiteness
  check, logging windows and evaluations; no checkpoint is saved or resumed). Writes
  metrics.jsonl, TensorBoard and training_curves.png to ``workdir``. Returns {"eval": the
  final eval metrics, "train_seconds": the loop's wall time, "eval_fn": the jitted eval
  step, "params": the trained top's parameters}.
  """
  tc = config.train
  unsupported = [name for name, on in (
      ("loss.contrastive",
       contrastive_terms.resolve(config.loss.get("contrastive")).kind != "none"),
      ("metarm", config.get("metarm", {}).get("enabled", False)),
      ("data.strength", bool(config.get("data", {}).get("strength", {}).get("path"))))
      if on]
  if unsupported:
    raise ValueError(f"training on cached features supports the plain BT loss only; "
                     f"{', '.join(unsupported)} need the full model (rmjax train-rm)")
  top = TopModel(model, start)
  graphdef, params = nnx.split(top)
  tx = make_optimizer(config.optim, tc.steps)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  shardings = parallel.tree_shardings(state, mesh)
  state = jax.device_put(state, shardings)
  source = ArraySource(train, tc.batch_size, seed=config.seed)
  next_batch = lambda step: trim(source.batch(step))
  batch_ndims = {k: v.ndim for k, v in next_batch(0).items()}
  train_step = parallel.compile_step(make_train_step(graphdef, tx, config.loss), mesh,
                                     shardings, batch_ndims)
  eval_fn = jax.jit(make_eval_step(graphdef))
  writer = MetricsWriter(workdir)
  t0 = time.perf_counter()
  result = loop.run(
      state=state, step_fn=train_step, steps=tc.steps,
      batches=lambda step: parallel.shard_batch(next_batch(step), mesh),
      checkpointer=NoCheckpoints(), writer=writer, progress=Progress(0, tc.steps),
      log_every=tc.log_every, eval_every=tc.eval_every,
      evaluate=lambda s: evaluate(eval_fn, s["params"], evaluation, tc.batch_size, mesh),
      progress_keys=("loss", "accuracy"))
  seconds = time.perf_counter() - t0
  params = result.state["params"]
  nnx.update(top, jax.device_get(params))  # the trained top into the full model
  plot_training_curves(writer.jsonl_path, os.path.join(workdir, "training_curves.png"),
                       panels=(("loss",), ("accuracy",)))
  return {"eval": result.eval, "train_seconds": seconds, "eval_fn": eval_fn, "params": params}


class NoCheckpoints:
  """The checkpointer of a run that saves nothing while it trains (``loop.run`` asks every
  run for one): a run on cached features saves only its final full model
  (``save_full_model``), and SIGTERM stops it as it would any process."""

  preempted = False

  def install_sigterm_handler(self):
    return contextlib.nullcontext()

  def save(self, *args, **kwargs) -> bool:
    return False

  def wait(self) -> None:
    pass

  def close(self) -> None:
    pass


def save_full_model(model: Transformer, workdir: str, run_config, data_hash: str,
                    step: int) -> str:
  """The full model as ``<workdir>/checkpoints/<step>`` in ``train-rm``'s layout.

  ``run_config`` must be shaped like a ``train-rm`` config where ``load_rm`` reads it:
  ``model`` (``init_from`` or preset fields) and ``data`` (``source="files"`` with the
  tokenizer, seq_len and max_response_len the model was trained with).
  """
  directory = os.path.join(workdir, "checkpoints")
  with Checkpointer(directory, keep=1, interval=1,
                    provenance=provenance(run_config, data_hash)) as checkpointer:
    state = {"params": nnx.state(model), "step": jnp.asarray(step, jnp.int32)}
    checkpointer.save(step, state, {"data_step": step}, force=True)
    checkpointer.wait()
  return directory
