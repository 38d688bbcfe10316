"""Load a trained reward model from a run's workdir, for scoring and evaluation.

Reads the latest committed step of ``<workdir>/checkpoints`` (the layout of
``rmjax.train.checkpoint``): the resolved run config from its provenance, the vocabulary
size from the stored embedding's shape, and only the ``params`` of the train state,
straight into the shardings of the given mesh (one device by default). The optimizer
state is never read.

The checkpoint directory is opened read-only: unlike constructing a ``Checkpointer``
(which creates the directory and deletes unfinished ``*.orbax-checkpoint-tmp`` saves on
start-up), loading never writes, so it is safe while the run is still training.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from flax import nnx

from rmjax import parallel
from rmjax.models.transformer import Transformer
from rmjax.train import rm_trainer
from rmjax.train.checkpoint import abstract_like

_ITEMS = ("state", "extra", "provenance")  # rmjax.train.checkpoint's step layout


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax warns that a read-only directory is read-only; that is the point."""
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(level)


def checkpoint_dir(workdir: str | os.PathLike) -> pathlib.Path:
  """``<workdir>/checkpoints``; ``workdir`` may also be that folder itself."""
  workdir = pathlib.Path(workdir)
  for folder in (workdir / "checkpoints", workdir):
    if folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir()):
      return folder
  raise FileNotFoundError(f"no committed checkpoint in {workdir} (looked for "
                          f"{workdir / 'checkpoints'}/<step>); train one with rmjax train-rm")


def _manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False,
                                         max_to_keep=None, enable_async_checkpointing=False)
  handlers = {"state": ocp.PyTreeCheckpointHandler(), "extra": ocp.JsonCheckpointHandler(),
              "provenance": ocp.JsonCheckpointHandler()}
  with _quiet_orbax():
    return ocp.CheckpointManager(directory, item_names=_ITEMS, options=options,
                                 item_handlers=handlers)


def single_device_mesh():
  return parallel.make_mesh(parallel.MeshConfig(1, 1, 1), devices=jax.devices()[:1])


def load_trained_rm(workdir: str | os.PathLike, mesh=None, *, step: int | None = None
                    ) -> tuple[Transformer, ml_collections.ConfigDict]:
  """(model, run config) of the latest (or the given) checkpoint step of a run.

  ``mesh``: where the parameters go, sharded by their logical axes (default: a one-device
  mesh on the first device). The config is the run's resolved ``train-rm`` config; its
  ``model`` fields and the stored vocabulary size rebuild the architecture
  (``rm_trainer.build_model_config``). ``config.checkpoint`` (directory, step) is added
  to say which checkpoint the model is.
  """
  directory = checkpoint_dir(workdir)
  manager = _manager(directory)
  try:
    steps = manager.all_steps()
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise FileNotFoundError(f"no checkpoint step {step} in {directory} (steps: {steps})")
    with _quiet_orbax():
      run = manager.restore(step, args=ocp.args.Composite(
          provenance=ocp.args.JsonRestore())).provenance.get("config")
      if not run or "model" not in run:
        raise ValueError(f"{directory}/{step}: the provenance holds no run config with a "
                         "'model' section; not a reward-model run?")
      config = ml_collections.ConfigDict(run)
      stored = manager.item_metadata(step).state
      vocab_size = int(stored["params"]["embed"]["value"].shape[0])
      cfg = rm_trainer.build_model_config(config.model, vocab_size)
      mesh = single_device_mesh() if mesh is None else mesh
      graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
      target = {"params": abstract_like(abstract, parallel.tree_shardings(abstract, mesh))}
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True)))
  finally:
    manager.close()
  config.checkpoint = ml_collections.ConfigDict(dict(directory=str(directory), step=step))
  return nnx.merge(graphdef, restored.state["params"]), config


def resolve_max_len(requested: int, model: Transformer) -> int:
  """``requested`` tokens (0 = the model's ``max_seq_len``), at most ``max_seq_len``."""
  limit = model.cfg.max_seq_len
  if requested < 0 or requested > limit:
    raise ValueError(f"max_len={requested} must be between 1 and the model's max_seq_len "
                     f"{limit} (0 = {limit})")
  return requested or limit
