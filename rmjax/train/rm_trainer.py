"""The reward-model training loop: data in, a trained, evaluated, checkpointed model out.

Thin by design: the math is in ``rmjax.objectives.bt``, the step in ``rm_step``, the
sharding in ``rmjax.parallel``, checkpoints in ``checkpoint``. A run resumes
automatically from the latest checkpoint in its workdir, onto the current mesh.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rmjax import parallel
from rmjax.data import schema, shared_prompt
from rmjax.data.array_source import eval_batches
from rmjax.models import config as model_config
from rmjax.models import gguf_io, hf_io
from rmjax.models.transformer import Transformer
from rmjax.objectives import bt
from rmjax.train import rm_data
from rmjax.train.checkpoint import Checkpointer, abstract_like, provenance
from rmjax.train.metrics_writer import MetricsWriter, Progress
from rmjax.train.optim import make_optimizer
from rmjax.train.plots import plot_training_curves
from rmjax.train.rm_step import make_eval_step, make_train_step


def check_finite(loss: float, step: int) -> None:
  if not math.isfinite(loss):
    raise FloatingPointError(
        f"non-finite loss {loss} at step {step}; the last good checkpoint is kept")


def build_model_config(cfg, vocab_size: int) -> model_config.ModelConfig:
  """A preset with the config's ModelConfig fields on top (``init_from`` aside)."""
  fields = {k: v for k, v in cfg.to_dict().items() if k not in ("preset", "init_from")}
  if cfg.preset not in model_config.PRESETS:
    raise ValueError(f"model.preset={cfg.preset!r} is not one of {sorted(model_config.PRESETS)}")
  return model_config.PRESETS[cfg.preset](
      **fields, vocab_size=vocab_size, num_reward_heads=1, lm_head=False)


def build_model(cfg, vocab_size: int, seed: int, mesh) -> Transformer:
  """A fresh reward model, or one whose backbone comes from ``cfg.init_from`` (a GGUF
  file or a Hugging Face folder), sharded on ``mesh``."""
  if not cfg.init_from:
    mcfg = build_model_config(cfg, vocab_size)
    return parallel.init_sharded(lambda: Transformer(mcfg, rngs=nnx.Rngs(seed)), mesh)
  heads = dict(num_reward_heads=1, lm_head=False, seed=seed)
  if str(cfg.init_from).endswith(".gguf"):
    model, _ = gguf_io.load_gguf(cfg.init_from, **heads)
  else:
    model = hf_io.load_hf(cfg.init_from, **heads)
  if model.cfg.vocab_size < vocab_size:
    raise ValueError(f"model.init_from={cfg.init_from} has {model.cfg.vocab_size} token ids "
                     f"but the data's tokenizer has {vocab_size}")
  return parallel.shard_model(model, mesh)


def evaluate(eval_fn, params, arrays, batch_size: int, mesh) -> dict[str, float]:
  """Held-out metrics over every eval pair (algorithms.md §1)."""
  parts = []
  for batch, real in eval_batches(arrays, batch_size):
    out = jax.device_get(eval_fn(params, parallel.shard_batch(batch, mesh)))
    parts.append({k: v[:real] for k, v in out.items()})
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  r_c, r_r = out["r_chosen"], out["r_rejected"]
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
  mesh = parallel.make_mesh(parallel.MeshConfig(**config.mesh))
  data_parallel = parallel.sharding.data_parallel_size(mesh)
  if tc.batch_size % data_parallel:
    raise ValueError(f"train.batch_size={tc.batch_size} is not divisible by the data-parallel "
                     f"size {data_parallel} of mesh {dict(mesh.shape)}")
  for name in ("steps", "log_every", "eval_every", "save_every"):
    if tc[name] < 1:
      raise ValueError(f"train.{name}={tc[name]} must be >= 1")
  data = rm_data.load(config.data, tc.batch_size, config.seed)
  updates = tc.steps // config.optim.grad_accum
  if updates < 1:
    raise ValueError(f"train.steps={tc.steps} gives no update with "
                     f"optim.grad_accum={config.optim.grad_accum}")
  tx = make_optimizer(config.optim, updates)

  model = build_model(config.model, data.vocab_size, config.seed, mesh)
  graphdef, params = nnx.split(model)
  opt_shardings = parallel.tree_shardings(jax.eval_shape(tx.init, params), mesh)
  state = {"params": params, "opt_state": jax.jit(tx.init, out_shardings=opt_shardings)(params),
           "step": jnp.zeros((), jnp.int32)}
  shardings = parallel.tree_shardings(state, mesh)
  state = jax.device_put(state, shardings)  # committed like the step's outputs: one compile

  next_batch = data.train.batch
  if tc.shared_prompt:  # encode each prompt once: [prompt | chosen | rejected] per row
    next_batch = lambda step: shared_prompt.pack(data.train.batch(step), *data.slots)
  batch_ndims = {k: v.ndim for k, v in next_batch(0).items()}
  train_step = parallel.compile_step(make_train_step(graphdef, tx, config.loss), mesh,
                                     shardings, batch_ndims)
  eval_fn = jax.jit(make_eval_step(graphdef))

  workdir = tc.workdir
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints,
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
  with checkpointer.install_sigterm_handler():
    for step in range(start, tc.steps):
      state, metrics = train_step(state, parallel.shard_batch(next_batch(step), mesh))
      metrics = jax.device_get(metrics)
      try:
        check_finite(float(metrics["loss"]), step + 1)
      except FloatingPointError:
        checkpointer.wait()  # the last good save may still be writing: commit it first
        raise
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
  checkpointer.wait()
  checkpointer.close()
  writer.close()
  plot = plot_training_curves(writer.jsonl_path, os.path.join(workdir, "training_curves.png"))
  return {"eval": eval_metrics, "workdir": workdir, "plot": plot}
