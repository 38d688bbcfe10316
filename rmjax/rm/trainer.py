"""The reward-model training loop: data in, a trained, evaluated, checkpointed model out.

Thin by design: the model, state and steps come from ``rmjax.rm.build`` (the one builder
the dry run uses too), the math from ``rmjax.objectives``, the loop from
``rmjax.runtime.loop``. A run resumes automatically from the latest checkpoint in its
workdir, onto the current mesh.
"""

from __future__ import annotations

import os

from rmjax import parallel
from rmjax.rm import batches as rm_batches
from rmjax.rm import build as rm_build
from rmjax.rm import metarm
from rmjax.rm.evaluate import evaluate
from rmjax.runtime import loop
from rmjax.runtime.checkpoint import Checkpointer, provenance
from rmjax.runtime.metrics import MetricsWriter, Progress
from rmjax.runtime.plots import plot_training_curves


def train(config) -> dict:
  """Train per ``config`` (see ``rmjax/configs/train_rm.py``); returns final eval metrics."""
  spec = rm_build.RMSpec.from_config(config)  # config errors before any data is read
  mesh = parallel.make_mesh(parallel.MeshConfig(**config.mesh))
  rm_build.check_mesh(spec, mesh)
  tc, layout = config.train, spec.layout
  data = rm_batches.load(config.data, spec.batch_size, spec.seed, layout, spec.shared_prompt)
  if spec.metarm is not None:  # each batch also carries meta responses
    data = metarm.attach(data, config, layout, parallel.sharding.data_parallel_size(mesh))
  program = rm_build.build(config, data.vocab_size, mesh)
  next_batch = data.train.batch
  train_step = program.compile_train_step({k: v.ndim for k, v in next_batch(0).items()})

  workdir = tc.workdir
  checkpoints = tc.get("checkpoint_dir") or os.path.join(workdir, "checkpoints")
  checkpointer = Checkpointer(checkpoints, keep=tc.keep_checkpoints,
                              interval=tc.save_every,
                              provenance=provenance(config, data.data_hash))
  writer = MetricsWriter(workdir)
  result = loop.run(
      state=program.state, step_fn=train_step, steps=spec.steps,
      batches=lambda step: parallel.shard_batch(next_batch(step), mesh, members=layout.stacked,
                                                process_local=data.process_local),
      checkpointer=checkpointer, writer=writer, progress=Progress(0, spec.steps),
      log_every=tc.log_every, eval_every=tc.eval_every,
      evaluate=lambda s: evaluate(program.eval_step, s["params"], data.eval, spec.batch_size,
                                  mesh),
      restore_target=program.abstract_state, progress_keys=("loss", "accuracy"),
      on_resume=lambda step: print(f"resumed from step {step} in {workdir}"))
  plot = (plot_training_curves(writer.jsonl_path, os.path.join(workdir, "training_curves.png"))
          if writer.enabled else None)
  return {"eval": result.eval, "workdir": workdir, "plot": plot}
