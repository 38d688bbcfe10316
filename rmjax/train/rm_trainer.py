"""The reward-model training loop: data in, a trained, evaluated, checkpointed model out.

Thin by design: the math is in ``rmjax.objectives.bt``, the step in ``rm_step``, the
sharding in ``rmjax.parallel``, checkpoints in ``checkpoint``, ensembles in
``ensemble``. A run resumes automatically from the latest checkpoint in its workdir,
onto the current mesh.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rmjax import parallel
from rmjax.data import schema
from rmjax.data.array_source import eval_batches
from rmjax.models import config as model_config
from rmjax.models import gguf_io, hf_io, lora
from rmjax.models.transformer import Transformer
from rmjax.objectives import bt
from rmjax.train import contrastive_aux, ensemble, metarm, rm_data
from rmjax.train.checkpoint import Checkpointer, abstract_like, provenance
from rmjax.train.metrics_writer import MetricsWriter, Progress
from rmjax.train.optim import make_optimizer
from rmjax.train.plots import plot_training_curves
from rmjax.train.rm_step import (make_eval_step, make_loss_fn, make_member_update,
                                 make_train_step)


def check_finite(loss: float, step: int) -> None:
  if not math.isfinite(loss):
    raise FloatingPointError(
        f"non-finite loss {loss} at step {step}; the last good checkpoint is kept")


def build_model_config(cfg, vocab_size: int, heads: int = 1,
                       **overrides) -> model_config.ModelConfig:
  """A preset with the config's ModelConfig fields on top (``init_from`` aside), then
  ``overrides`` (fields the loss needs: ``contrastive_aux.model_fields``)."""
  fields = {k: v for k, v in cfg.to_dict().items() if k not in ("preset", "init_from")}
  if cfg.preset not in model_config.PRESETS:
    raise ValueError(f"model.preset={cfg.preset!r} is not one of {sorted(model_config.PRESETS)}")
  return model_config.PRESETS[cfg.preset](
      **{**fields, **overrides}, vocab_size=vocab_size, num_reward_heads=heads, lm_head=False)


def _load_pretrained(cfg, vocab_size: int, seed: int, heads: int, **overrides) -> Transformer:
  """``cfg.init_from``'s backbone (GGUF file or Hugging Face folder) with fresh heads."""
  options = dict(num_reward_heads=heads, lm_head=False, seed=seed, **lora.config_fields(cfg),
                 **overrides)
  if str(cfg.init_from).endswith(".gguf"):
    model, _ = gguf_io.load_gguf(cfg.init_from, **options)
  else:
    model = hf_io.load_hf(cfg.init_from, **options)
  if model.cfg.vocab_size < vocab_size:
    raise ValueError(f"model.init_from={cfg.init_from} has {model.cfg.vocab_size} token ids "
                     f"but the data's tokenizer has {vocab_size}")
  return model


def build_model(cfg, vocab_size: int, seed: int, mesh, heads: int = 1,
                **overrides) -> Transformer:
  """A fresh reward model with ``heads`` reward heads, or one whose backbone comes from
  ``cfg.init_from`` (a GGUF file or a Hugging Face folder), sharded on ``mesh``.
  ``overrides``: ModelConfig fields set on top (``build_model_config``)."""
  if not cfg.init_from:
    mcfg = build_model_config(cfg, vocab_size, heads, **overrides)
    return parallel.init_sharded(lambda: Transformer(mcfg, rngs=nnx.Rngs(seed)), mesh)
  return parallel.shard_model(_load_pretrained(cfg, vocab_size, seed, heads, **overrides),
                              mesh)


def build_members(cfg, vocab_size: int, seed: int, mesh, layout: ensemble.Layout,
                  **overrides):
  """(graphdef, params) of ``layout``'s model(s) on ``mesh``: stacked [K, ...] for
  separate members (member m built as ``build_model`` builds it with its own seed),
  else one model with ``layout.heads`` heads."""
  if not layout.stacked:
    return nnx.split(build_model(cfg, vocab_size, seed, mesh, layout.heads, **overrides))
  seeds = ensemble.member_seeds(seed, layout.k)
  if not cfg.init_from:
    mcfg = build_model_config(cfg, vocab_size, **overrides)
    return ensemble.init_stacked(lambda rngs: Transformer(mcfg, rngs=rngs), seeds, mesh)
  # A pretrained backbone: the same in every member, heads initialised per member.
  splits = [nnx.split(_load_pretrained(cfg, vocab_size, s, 1, **overrides)) for s in seeds]
  return splits[0][0], parallel.shard_tree(ensemble.stack_states([p for _, p in splits]), mesh)


def check_layout(layout: ensemble.Layout, mesh) -> None:
  """The mesh's ensemble axis must split separate members evenly; otherwise it would
  only replicate the same work."""
  size = parallel.sharding.ensemble_size(mesh)
  if size > 1 and not layout.stacked:
    raise ValueError(f"mesh.ensemble={size} spreads separate ensemble members over devices, "
                     f"but this run has ensemble.k={layout.k}, shared_backbone="
                     f"{layout.shared_backbone}; use mesh.ensemble=1")
  if layout.k % size:
    raise ValueError(f"ensemble.k={layout.k} is not divisible by mesh.ensemble={size}")


def evaluate(eval_fn, params, arrays, batch_size: int, mesh) -> dict[str, float]:
  """Held-out metrics over every eval pair (algorithms.md §1).

  ``eval_fn`` gives [B, K] member rewards. The plain names ("accuracy", "margin", "ece",
  "length_correlation", "gold_agreement") score the members' mean reward (K = 1: the
  model); an ensemble adds each member's metrics as "name/m" and the average member's
  accuracy and gold agreement as "member_accuracy" and "member_gold_agreement".
  """
  parts = []
  for batch, real in eval_batches(arrays, batch_size):
    out = parallel.sharding.to_host(eval_fn(params, parallel.shard_batch(batch, mesh)))
    parts.append({k: v[:real] for k, v in out.items()})
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  r_c, r_r = out["r_chosen"], out["r_rejected"]
  metrics = pair_metrics(r_c.mean(1), r_r.mean(1), arrays)
  k = r_c.shape[1]
  if k > 1:
    members = [pair_metrics(r_c[:, m], r_r[:, m], arrays) for m in range(k)]
    for m, member in enumerate(members):
      metrics.update({f"{name}/{m}": value for name, value in member.items()})
    for name in ("accuracy", "gold_agreement"):
      if name in metrics:
        metrics[f"member_{name}"] = float(np.mean([member[name] for member in members]))
  return metrics


def pair_metrics(r_c: np.ndarray, r_r: np.ndarray, arrays) -> dict[str, float]:
  """Metrics of rewards r_c, r_r [n] of the pairs ``arrays``."""
  prompt_len = arrays.get("prompt_len", 0)
  lengths = [arrays[key].sum(1) - prompt_len for key in (schema.CHOSEN_MASK, schema.REJECTED_MASK)]
  metrics = {
      "accuracy": bt.pairwise_accuracy(r_c, r_r),
      "margin": bt.mean_margin(r_c, r_r),
      "ece": bt.expected_calibration_error(r_c - r_r),
      "length_correlation": bt.pearson_correlation(np.concatenate([r_c, r_r]),
                                                   np.concatenate(lengths)),
  }
  if schema.GOLD_CHOSEN in arrays:
    gold_c, gold_r = arrays[schema.GOLD_CHOSEN], arrays[schema.GOLD_REJECTED]
    metrics["gold_agreement"] = bt.gold_agreement(r_c, r_r, gold_c, gold_r)
  return {k: float(v) for k, v in metrics.items()}


def train(config) -> dict:
  """Train per ``config`` (see ``rmjax/configs/train_rm.py``); returns final eval metrics."""
  tc = config.train
  layout = ensemble.Layout.from_config(config.get("ensemble"))
  aux_loss = contrastive_aux.make_aux_loss(config.loss.get("contrastive"))  # or None
  mesh = parallel.make_mesh(parallel.MeshConfig(**config.mesh))
  check_layout(layout, mesh)
  data_parallel = parallel.sharding.data_parallel_size(mesh)
  if tc.batch_size % data_parallel:
    raise ValueError(f"train.batch_size={tc.batch_size} is not divisible by the data-parallel "
                     f"size {data_parallel} of mesh {dict(mesh.shape)}")
  for name in ("steps", "log_every", "eval_every", "save_every"):
    if tc[name] < 1:
      raise ValueError(f"train.{name}={tc[name]} must be >= 1")
  data = rm_data.load(config.data, tc.batch_size, config.seed, layout, tc.shared_prompt)
  use_metarm = config.get("metarm") is not None and config.metarm.enabled
  if use_metarm:  # each batch also carries meta responses
    data = metarm.attach(data, config, layout, data_parallel)
  updates = tc.steps // config.optim.grad_accum
  if updates < 1:
    raise ValueError(f"train.steps={tc.steps} gives no update with "
                     f"optim.grad_accum={config.optim.grad_accum}")
  graphdef, params = build_members(config.model, data.vocab_size, config.seed, mesh, layout,
                                   **contrastive_aux.run_model_fields(config))
  tx = make_optimizer(config.optim, updates, lora.trainable_mask(params))  # None: all train
  opt_init = jax.vmap(tx.init) if layout.stacked else tx.init  # one state per member
  opt_shardings = parallel.tree_shardings(jax.eval_shape(opt_init, params), mesh)
  state = {"params": params, "opt_state": jax.jit(opt_init, out_shardings=opt_shardings)(params),
           "step": jnp.zeros((), jnp.int32)}
  shardings = parallel.tree_shardings(state, mesh)
  state = jax.device_put(state, shardings)  # committed like the step's outputs: one compile

  next_batch = data.train.batch
  batch_ndims = {k: v.ndim for k, v in next_batch(0).items()}
  member_devices = parallel.sharding.ensemble_size(mesh)
  loss_fn = make_loss_fn(graphdef, config.loss, aux_loss)
  update = (metarm.make_meta_update(graphdef, tx, loss_fn, config.metarm.eta,
                                    config.metarm.first_order)
            if use_metarm else make_member_update(tx, loss_fn))
  train_step = parallel.compile_step(
      make_train_step(graphdef, tx, config.loss, layout, member_devices, config.seed, update),
      mesh, shardings, batch_ndims, members=layout.stacked)
  eval_fn = jax.jit(parallel.sharding.on_mesh(make_eval_step(graphdef, layout, member_devices),
                                              mesh))

  workdir = tc.workdir
  checkpoints = tc.get("checkpoint_dir") or os.path.join(workdir, "checkpoints")
  checkpointer = Checkpointer(checkpoints, keep=tc.keep_checkpoints,
                              interval=tc.save_every,
                              provenance=provenance(config, data.data_hash))
  restored = checkpointer.restore_latest(abstract_like(state, shardings))
  start = 0
  if restored is not None:
    start, state, _ = restored
    print(f"resumed from step {start} in {workdir}")
  writer = MetricsWriter(workdir)
  progress = Progress(start, tc.steps)
  eval_metrics, window = {}, []
  try:
    with checkpointer.install_sigterm_handler():
      for step in range(start, tc.steps):
        batch = parallel.shard_batch(next_batch(step), mesh, members=layout.stacked,
                                     process_local=data.process_local)
        state, metrics = train_step(state, batch)
        metrics = jax.device_get(metrics)
        check_finite(float(metrics["loss"]), step + 1)
        window.append(metrics)
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:  # means over the logging window
          means = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
          window = []
          writer.write(done, "train", means)
          progress.update(done, {k: means[k] for k in ("loss", "accuracy")})
        if done % tc.eval_every == 0 or done == tc.steps:
          eval_metrics = evaluate(eval_fn, state["params"], data.eval, tc.batch_size, mesh)
          writer.write(done, "eval", eval_metrics)
        checkpointer.save(done, state, {"data_step": done},
                          force=done == tc.steps or checkpointer.preempted)
        if checkpointer.preempted:
          print(f"SIGTERM: saved step {done}, exiting")
          break
  finally:  # a failing run (a NaN loss) still commits the checkpoints it started
    checkpointer.wait()
    checkpointer.close()
    writer.close()
  plot = (plot_training_curves(writer.jsonl_path, os.path.join(workdir, "training_curves.png"))
          if writer.enabled else None)
  return {"eval": eval_metrics, "workdir": workdir, "plot": plot}
