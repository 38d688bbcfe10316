"""Load a trained reward model from a run's workdir, for scoring and evaluation.

Reads the latest committed step of ``<workdir>/checkpoints`` (the layout of
``rmjax.runtime.checkpoint``): the resolved run config from its provenance, the vocabulary
size from the stored embedding's shape, and only the ``params`` of the train state,
straight into the shardings of the given mesh (one device by default). The optimizer
state is never read.

The checkpoint directory is opened read-only: unlike constructing a ``Checkpointer``
(which creates the directory and deletes unfinished ``*.orbax-checkpoint-tmp`` saves on
start-up), loading never writes, so it is safe while the run is still training.

An ensemble run (``rmjax.rm.members``) loads with ``load_ensemble`` as a scorer
``(tokens, mask) -> [B, K]`` member rewards; so does a single model (K = 1).
``load_trained_rm`` gives the ``Transformer`` of a run with one backbone (a single
model, or a shared backbone whose K heads are the members).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from flax import nnx

from rmjax import parallel
from rmjax.models.config import ModelConfig
from rmjax.models.transformer import Transformer
from rmjax.rm import build as rm_build
from rmjax.rm import contrastive_terms
from rmjax.rm import members as ensemble
from rmjax.rm import step as rm_step
from rmjax.runtime.checkpoint import abstract_like

_ITEMS = ("state", "extra", "provenance")  # rmjax.runtime.checkpoint's step layout


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
  workdir = pathlib.Path(workdir).absolute()  # Orbax reads absolute paths only
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


def model_config_of(model_cfg, vocab_size: int, heads: int = 1, **overrides) -> ModelConfig:
  """The architecture a ``train-rm`` run built (``rm_build.model_config``): its preset and
  fields, or, for a run with ``model.init_from``, the GGUF file's or Hugging Face folder's
  config (which must still be there). ``vocab_size``: the checkpoint's embedding rows;
  ``heads``: reward heads; ``overrides``: the fields its loss added
  (``contrastive_terms.model_fields``)."""
  init_from = model_cfg.get("init_from", "")
  if not init_from:
    return rm_build.build_model_config(model_cfg, vocab_size, heads, **overrides)
  try:
    cfg = rm_build.pretrained_config(model_cfg, heads, **overrides)
  except FileNotFoundError as error:
    raise FileNotFoundError(f"the run's {error}; its config defines the architecture") from None
  if cfg.vocab_size != vocab_size:
    raise ValueError(f"model.init_from={init_from} has {cfg.vocab_size} token ids but the "
                     f"checkpoint's embedding has {vocab_size}")
  return cfg


def single_device_mesh():
  return parallel.make_mesh(parallel.MeshConfig(1, 1, 1), devices=jax.devices()[:1])


def load_trained_rm(workdir: str | os.PathLike, mesh=None, *, step: int | None = None
                    ) -> tuple[Transformer, ml_collections.ConfigDict]:
  """(model, run config) of the latest (or the given) checkpoint step of a run.

  ``mesh``: where the parameters go, sharded by their logical axes (default: a one-device
  mesh on the first device). The config is the run's resolved ``train-rm`` config; its
  ``model`` section and the stored vocabulary size rebuild the architecture
  (``model_config_of``). ``config.checkpoint`` (directory, step) is added
  to say which checkpoint the model is. An ensemble of separate members is no single
  ``Transformer``: load it with ``load_ensemble``.
  """
  scorer, config = load_ensemble(workdir, mesh, step=step)
  if scorer.layout.stacked:
    raise ValueError(f"{config.checkpoint.directory} holds an ensemble of "
                     f"{scorer.k} separate members; load it with load_ensemble")
  return nnx.merge(scorer.graphdef, scorer.params), config


@contextlib.contextmanager
def opened_step(workdir, step: int | None = None):
  """(read-only checkpoint manager, step) of a run's checkpoint step (the latest if
  None), with Orbax's narration silenced; the manager closes on exit."""
  directory = checkpoint_dir(workdir)
  manager = _manager(directory)
  try:
    steps = manager.all_steps()
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise FileNotFoundError(f"no checkpoint step {step} in {directory} (steps: {steps})")
    with _quiet_orbax():
      yield manager, step
  finally:
    manager.close()


def stored_provenance(manager, step: int) -> dict:
  """The provenance item (run config, versions, git commit, data hash) of an opened step."""
  return manager.restore(step, args=ocp.args.Composite(
      provenance=ocp.args.JsonRestore())).provenance or {}


def read_provenance(workdir, step: int | None = None) -> tuple[int, dict]:
  """(step, provenance dict) of a run's checkpoint step (the latest if None)."""
  with opened_step(workdir, step) as (manager, step):
    return step, stored_provenance(manager, step)


def load_ensemble(workdir: str | os.PathLike, mesh=None, *, step: int | None = None
                  ) -> tuple[ensemble.RewardEnsemble, ml_collections.ConfigDict]:
  """(scorer, run config) of a run's checkpoint, as ``load_trained_rm`` reads it.

  ``scorer(tokens, mask)`` gives float32 [B, K] member rewards (K = 1 for a single
  model); ``scorer.cfg`` is one member's ModelConfig. Separate members' stacked
  parameters are sharded over ``mesh``'s ensemble axis when it divides K.
  """
  directory = checkpoint_dir(workdir)
  with opened_step(workdir, step) as (manager, step):
    run = stored_provenance(manager, step).get("config")
    if not run or "model" not in run:
      raise ValueError(f"{directory}/{step}: the provenance holds no run config with a "
                       "'model' section; not a reward-model run?")
    config = ml_collections.ConfigDict(run)
    stored = manager.item_metadata(step).state["params"]
    # The model's part: params hold it under "model" when the loss had parameters of its
    # own (SwAV's prototypes); older runs kept those inside the model's state.
    wrapped = rm_step.MODEL in stored
    stored = stored[rm_step.MODEL] if wrapped else stored
    layout = ensemble.Layout.from_config(config.get("ensemble"))
    vocab_size = int(stored["embed"]["value"].shape[-2])  # [(K,) vocab, embed]
    loss = config.get("loss") or {}
    cfg = model_config_of(config.model, vocab_size, layout.columns,
                          **contrastive_terms.model_fields(loss.get("contrastive")))
    mesh = single_device_mesh() if mesh is None else mesh
    graphdef, abstract = rm_build.abstract_members(cfg, layout)
    abstract = abstract_like(abstract, parallel.tree_shardings(abstract, mesh))
    target = {"params": {rm_step.MODEL: abstract} if wrapped else abstract}
    # Partial: the optimizer state, the loss's parameters and anything else not in the
    # model (an older swav run's prototypes) stay on disk.
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)))
  config.checkpoint = ml_collections.ConfigDict(dict(directory=str(directory), step=step))
  params = rm_step.model_params(restored.state["params"])
  return ensemble.RewardEnsemble(graphdef, params, layout, cfg), config


@dataclasses.dataclass(frozen=True)
class Encoding:
  """How ``score``/``eval-rm`` turn text into a trained model's sequences."""

  tokenizer: str  # a ``load_tokenizer`` spec; "" = token ids only
  max_len: int
  max_response_len: int | None


def encoding_for(run_config, model, tokenizer: str = "", max_len: int = 0,
                 max_response_len: int = 0) -> Encoding:
  """The given values, else the run's own (``data.files``: tokenizer, seq_len,
  max_response_len, for a run trained on preference files), else no tokenizer, the model's
  ``max_seq_len`` and no response limit. ``max_len`` may not exceed ``max_seq_len``.
  ``model``: a ``Transformer`` or ``RewardEnsemble`` (anything with a ModelConfig ``cfg``)."""
  files = run_config.data.files if run_config.get("data", {}).get("source") == "files" else {}
  limit = model.cfg.max_seq_len
  max_len = max_len or files.get("seq_len", 0) or limit
  if not 1 <= max_len <= limit:
    raise ValueError(f"max_len={max_len} must be between 1 and the model's max_seq_len {limit}")
  max_response_len = max_response_len or files.get("max_response_len", 0) or None
  return Encoding(tokenizer or files.get("tokenizer", "") or "", max_len, max_response_len)
