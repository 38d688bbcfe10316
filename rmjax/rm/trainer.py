"""The reward-model training loop: data in, a trained, evaluated, checkpointed model out.

Thin by design: the math is in ``rmjax.objectives.bt``, the step in ``rm_step``, the
sharding in ``rmjax.parallel``, checkpoints in ``checkpoint``, ensembles in
``ensemble``. A run resumes automatically from the latest checkpoint in its workdir,
onto the current mesh.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from rmjax import parallel
from rmjax.models import lora
from rmjax.rm import batches as rm_data
from rmjax.rm import contrastive_terms as contrastive_aux
from rmjax.rm import members as ensemble
from rmjax.rm import metarm
from rmjax.rm.build import build_members, check_layout
from rmjax.rm.evaluate import evaluate
from rmjax.rm.step import make_eval_step, make_loss_fn, make_member_update, make_train_step
from rmjax.runtime import loop
from rmjax.runtime.checkpoint import Checkpointer, abstract_like, provenance
from rmjax.runtime.metrics import MetricsWriter, Progress
from rmjax.runtime.optim import make_optimizer
from rmjax.runtime.plots import plot_training_curves


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
  writer = MetricsWriter(workdir)
  result = loop.run(
      state=state, step_fn=train_step, steps=tc.steps,
      batches=lambda step: parallel.shard_batch(next_batch(step), mesh, members=layout.stacked,
                                                process_local=data.process_local),
      checkpointer=checkpointer, writer=writer, progress=Progress(0, tc.steps),
      log_every=tc.log_every, eval_every=tc.eval_every,
      evaluate=lambda s: evaluate(eval_fn, s["params"], data.eval, tc.batch_size, mesh),
      restore_target=abstract_like(state, shardings), progress_keys=("loss", "accuracy"),
      on_resume=lambda step: print(f"resumed from step {step} in {workdir}"))
  plot = (plot_training_curves(writer.jsonl_path, os.path.join(workdir, "training_curves.png"))
          if writer.enabled else None)
  return {"eval": result.eval, "workdir": workdir, "plot": plot}
