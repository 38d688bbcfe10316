"""Orbax checkpoints of a train state, with provenance, atomic commits and resume.

A checkpoint step directory holds three items::

    <dir>/<step>/state       the train-state pytree (StandardSave: OCDBT/zarr arrays)
    <dir>/<step>/extra       JSON: data-iterator position, RNG key data, ... (caller's)
    <dir>/<step>/provenance  JSON: resolved config, package versions, git commit, data hash

The state is saved as given: Orbax flattens any registered pytree by its key paths, and
``nnx.State``/``nnx.Variable`` are pytrees (a Variable contributes a trailing ``value``
key), optax states are named tuples, typed PRNG keys are supported. Nothing is converted
to pure dicts; on restore the structure (Variables and their ``axes`` metadata
included) comes from the ``abstract_state`` the caller passes, and the arrays are read
straight into that tree's shardings, so a checkpoint written on one mesh restores onto
any other (see :func:`abstract_like`).

Atomicity: Orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it to
``<step>`` only after every item is written (on local and POSIX file systems; on GCS a
``commit_success.txt`` file plays that role). Step discovery ignores ``*.orbax-checkpoint-
tmp`` directories, so a save killed at any point before the rename is invisible to
:meth:`Checkpointer.restore_latest`, which resumes from the previous committed step.
``tests/train/test_checkpoint.py`` kills a process inside that window to check it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import pathlib
import signal
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

_PACKAGES = {"jax": "jax", "flax": "flax", "optax": "optax",
             "orbax": "orbax-checkpoint", "numpy": "numpy"}


def _git_commit() -> tuple[str | None, bool | None]:
  """(HEAD commit, whether tracked files differ from it) of rmjax's tree, or Nones."""
  here = pathlib.Path(__file__).resolve().parent
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=here, capture_output=True, text=True, timeout=10,
                           check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None, None
  return head or None, bool(dirty)


def _jsonable(x):
  """JSON fallback for numpy/JAX scalars and arrays (e.g. ``jax.random.key_data``)."""
  if isinstance(x, (np.ndarray, np.generic, jax.Array)):
    return np.asarray(x).tolist()
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return dataclasses.asdict(x)
  return str(x)


def _to_json(obj) -> dict:
  return json.loads(json.dumps(obj, default=_jsonable))


def provenance(config=None, data_hash: str | None = None) -> dict:
  """What produced a checkpoint: resolved config, package versions, git commit, data.

  ``config``: an ``ml_collections.ConfigDict`` (anything with ``to_dict``), a
  dataclass, a mapping or None. ``data_hash`` is the caller's hash of the training data.
  """
  import rmjax  # pylint: disable=import-outside-toplevel
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  elif dataclasses.is_dataclass(config) and not isinstance(config, type):
    config = dataclasses.asdict(config)
  versions = {}
  for name, dist in _PACKAGES.items():
    try:
      versions[name] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  versions["rmjax"] = rmjax.__version__
  commit, dirty = _git_commit()
  return _to_json({"config": config, "versions": versions, "git_commit": commit,
                   "git_dirty": dirty, "data_hash": data_hash})


def abstract_like(tree, shardings):
  """``tree`` (arrays or ShapeDtypeStructs) as ShapeDtypeStructs carrying ``shardings``.

  ``shardings`` matches ``tree``, e.g. ``rmjax.parallel.tree_shardings(tree, mesh)``
  for the mesh to restore onto; ``tree`` may come from ``jax.eval_shape``.
  """
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


class Checkpointer:
  """Periodic, asynchronous, atomic checkpoints of ``(state, extra)`` in ``directory``.

  ``interval``: ``save`` writes only steps that are multiples of it (unless forced);
  ``keep``: how many of the latest steps survive. ``provenance`` (from
  :func:`provenance`) is written beside every step.
  """

  def __init__(self, directory, *, keep: int | None = 3, interval: int = 1,
               provenance: dict | None = None):  # pylint: disable=redefined-outer-name
    # A bucket ("gs://..."): the shared storage every host of a multi-host run writes
    # its own shards to. Orbax needs local paths absolute.
    self.directory = (epath.Path(directory) if "://" in str(directory)
                      else pathlib.Path(directory).absolute())
    self.preempted = False
    self._provenance = _to_json(provenance or {})
    # Orbax's default policy also saves the first step it sees in an empty directory
    # (InitialSavePolicy); we want exactly the multiples of ``interval``, so the
    # policy below replaces the one save_interval_steps would build.
    policy = ocp.checkpoint_managers.AnySavePolicy([
        ocp.checkpoint_managers.FixedIntervalPolicy(interval),
        ocp.checkpoint_managers.PreemptionCheckpointingPolicy()])
    # cleanup_tmp_directories: remove the leftovers of killed saves on start-up.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=interval, save_decision_policy=policy,
        enable_async_checkpointing=True, create=True, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "extra", "provenance"), options=options)

  def save(self, step: int, state, extra: dict | None = None, *,
           force: bool = False) -> bool:
    """Start saving ``state`` and ``extra`` at ``step``; True if a save was started.

    Returns at once after the device-to-host copy; the write continues in the
    background (``wait`` blocks until committed). Skipped (False) when ``step`` is not
    due (unless ``force``) or is already saved.
    """
    if step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              extra=ocp.args.JsonSave(_to_json(extra or {})),
                              provenance=ocp.args.JsonSave(self._provenance))
    return self._manager.save(step, args=args, force=force)

  def restore_latest(self, abstract_state):
    """``(step, state, extra)`` of the latest committed step, or None if there is none.

    ``abstract_state``: the state's pytree of ``jax.ShapeDtypeStruct`` (or arrays), each
    carrying the ``sharding`` to restore into (:func:`abstract_like`).
    """
    for path, x in jax.tree_util.tree_leaves_with_path(abstract_state):
      if getattr(x, "sharding", None) is None:
        raise ValueError(f"restore_latest: leaf {jax.tree_util.keystr(path)} has no "
                         "sharding; build the target with abstract_like(tree, shardings)")
    self.wait()
    self._manager.reload()  # the directory may have been written by another process
    step = self._manager.latest_step()
    if step is None:
      return None
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
    return step, out.state, out.extra

  def read_provenance(self, step: int | None = None) -> dict | None:
    """The provenance JSON saved with ``step`` (default: the latest step)."""
    step = self._manager.latest_step() if step is None else step
    if step is None:
      return None
    return self._manager.restore(step, args=ocp.args.Composite(
        provenance=ocp.args.JsonRestore())).provenance

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def wait(self) -> None:
    """Block until every started save is committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  @contextlib.contextmanager
  def install_sigterm_handler(self, callback=None):
    """While active, SIGTERM sets ``self.preempted`` (and calls ``callback(signum)``).

    The handler does no I/O: the loop polls ``preempted`` after each step, saves with
    ``force=True``, waits and exits normally. ``callback`` must be equally light
    (set a flag, log nothing). Must be entered from the main thread (a Python rule).
    The previous handler is restored on exit. On multi-host runs every host must stop
    at the same step; use JAX's preemption sync (``jax.distributed`` with
    ``multihost_utils.reached_preemption_sync_point``) there instead.
    """
    def handler(signum, frame):  # pylint: disable=unused-argument
      self.preempted = True
      if callback is not None:
        callback(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
      yield self
    finally:
      signal.signal(signal.SIGTERM, previous)
