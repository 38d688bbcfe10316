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
``tests/runtime/test_checkpoint.py`` kills a process inside that window to check it.

What :meth:`Checkpointer.restore_latest` checks before it resumes, newest step first:

- the format (``FORMAT_VERSION`` in the provenance item): another one is a one-line error;
- the run: the stored config and data hash against the current ones (``provenance``);
  fields in ``run_identity.HARMLESS_FIELDS`` may differ, any other difference is a ``ValueError``
  naming the fields (``model.d_model: 64 -> 128``);
- the shapes: the stored array metadata against ``abstract_state``, so that another
  model or parameter tree is named leaf by leaf instead of failing inside Orbax;
- readability: a step whose files cannot be read (truncated or deleted arrays, a bad
  provenance) is skipped with a warning naming it and the previous step is tried; when no
  step can be read the error says so. A resumed run that saves a skipped step again
  replaces it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import pathlib
import signal
import subprocess
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from rmjax.runtime.run_identity import run_differences, shape_differences

# The checkpoint layout this module writes, stored as ``provenance["format"]``.
# 1: before the format was recorded; the same three items and state tree, so it is read
#    as is (nothing to convert). 2: the format recorded; the run is compared on resume.
FORMAT_VERSION = 2
_READABLE_FORMATS = (1, 2)

def _one_line(error: Exception, limit: int = 200) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


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
                   "git_dirty": dirty, "data_hash": data_hash, "format": FORMAT_VERSION})


def abstract_like(tree, shardings):
  """``tree`` (arrays or ShapeDtypeStructs) as ShapeDtypeStructs carrying ``shardings``.

  ``shardings`` matches ``tree``, e.g. ``rmjax.parallel.tree_shardings(tree, mesh)``
  for the mesh to restore onto; ``tree`` may come from ``jax.eval_shape``.
  """
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


class NoReadableCheckpoint(FileNotFoundError):
  """Committed steps exist, but none of them can be read."""


class _RunMismatch(Exception):
  """The stored checkpoint belongs to another format, run or model (not a damaged file)."""


class Checkpointer:
  """Periodic, asynchronous, atomic checkpoints of ``(state, extra)`` in ``directory``.

  ``interval``: ``save`` writes only steps that are multiples of it (unless forced);
  ``keep``: how many of the latest steps survive (>= 1; None keeps all). ``provenance``
  (from :func:`provenance`) is written beside every step, with ``FORMAT_VERSION``, and
  is what :meth:`restore_latest` compares a stored run with.

  Orbax's manager is made on first use, not here: it deletes the leftovers of unfinished
  saves when it starts, which must not happen to the directory of a run that is still
  writing, so a program takes its workdir lock (``MetricsWriter``) before it resumes.
  """

  def __init__(self, directory, *, keep: int | None = 3, interval: int = 1,
               provenance: dict | None = None):  # pylint: disable=redefined-outer-name
    # A bucket ("gs://..."): the shared storage every host of a multi-host run writes
    # its own shards to. Orbax needs local paths absolute.
    self.directory = (epath.Path(directory) if "://" in str(directory)
                      else pathlib.Path(directory).absolute())
    if keep is not None and keep < 1:
      raise ValueError(f"train.keep_checkpoints={keep} must be >= 1 (how many of the latest "
                       "checkpoints are kept; None keeps all)")
    self.preempted = False
    self._provenance = {**_to_json(provenance or {}), "format": FORMAT_VERSION}
    self._unreadable: set[int] = set()  # steps restore_latest skipped; save replaces them
    self._keep, self._interval, self._mgr = keep, interval, None

  @property
  def _manager(self) -> ocp.CheckpointManager:
    if self._mgr is None:
      self._mgr = self._make_manager(self._keep, self._interval)
    return self._mgr

  def _make_manager(self, keep, interval) -> ocp.CheckpointManager:
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
    # Handlers named up front, so that a fresh manager can read a step's metadata
    # before anything was saved or restored through it.
    handlers = {"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler(),
                "provenance": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(self.directory, item_names=tuple(handlers),
                                 item_handlers=handlers, options=options)

  def save(self, step: int, state, extra: dict | None = None, *,
           force: bool = False) -> bool:
    """Start saving ``state`` and ``extra`` at ``step``; True if a save was started.

    Returns at once after the device-to-host copy; the write continues in the
    background (``wait`` blocks until committed). Skipped (False) when ``step`` is not
    due (unless ``force``) or is already saved; a step ``restore_latest`` found unreadable
    is deleted and saved anew.
    """
    if step in self._unreadable:
      self._manager.delete(step)
      self._unreadable.discard(step)
    if step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              extra=ocp.args.JsonSave(_to_json(extra or {})),
                              provenance=ocp.args.JsonSave(self._provenance))
    return self._manager.save(step, args=args, force=force)

  def restore_latest(self, abstract_state):
    """``(step, state, extra)`` of the latest readable committed step, or None if there is
    none.

    ``abstract_state``: the state's pytree of ``jax.ShapeDtypeStruct`` (or arrays), each
    carrying the ``sharding`` to restore into (:func:`abstract_like`). Raises
    ``ValueError`` for another format, run (config, data hash) or shapes, and
    ``NoReadableCheckpoint`` when committed steps exist but none can be read; an unreadable step
    is skipped with a warning (the module docstring lists the checks).
    """
    for path, x in jax.tree_util.tree_leaves_with_path(abstract_state):
      if getattr(x, "sharding", None) is None:
        raise ValueError(f"restore_latest: leaf {jax.tree_util.keystr(path)} has no "
                         "sharding; build the target with abstract_like(tree, shardings)")
    self.wait()
    self._manager.reload()  # the directory may have been written by another process
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    last_error = None
    for i, step in enumerate(steps):
      try:
        stored = self._read_json(step, "provenance") or {}
        metadata = self._manager.item_metadata(step)["state"]
        stored_tree = metadata.tree if metadata is not None else None
        if stored_tree is None:
          raise ValueError("no metadata for the state item")
        self._check_format(stored)
        self._check_run(step, stored)
        self._check_shapes(step, stored_tree, abstract_state)
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
      except _RunMismatch as mismatch:  # the same at every step: not worth a fallback
        raise ValueError(str(mismatch)) from None
      except Exception as error:  # pylint: disable=broad-except  # any unreadable file
        last_error = error
        self._unreadable.add(step)
        then = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no earlier step"
        warnings.warn(f"checkpoint step {step} in {self.directory} is unreadable "
                      f"({_one_line(error)}); {then}", stacklevel=2)
        continue
      return step, out.state, out.extra
    raise NoReadableCheckpoint(f"no readable checkpoint in {self.directory}: steps {steps} all failed "
                       f"to read (latest error: {_one_line(last_error)}); move them away to "
                       "start again") from last_error

  def _read_json(self, step: int, item: str):
    args = ocp.args.Composite(**{item: ocp.args.JsonRestore()})
    return self._manager.restore(step, args=args)[item]

  def _check_format(self, stored: dict) -> None:
    found = stored.get("format", 1)
    if found not in _READABLE_FORMATS:
      raise _RunMismatch(f"{self.directory} holds checkpoints of format {found}; this rmjax "
                         f"writes {FORMAT_VERSION}: start a new workdir")

  def _check_run(self, step: int, stored: dict) -> None:
    differences = run_differences(stored, self._provenance)
    if differences:
      older = stored.get("format", 1) < FORMAT_VERSION
      what = (f"was written by an older rmjax (checkpoint format {stored.get('format', 1)}) "
              "for another config" if older else "holds another run")
      raise _RunMismatch(
          f"{self.directory}/{step} {what}: {'; '.join(differences)} (stored -> "
          "now); resume with the stored values or start a new workdir")

  def _check_shapes(self, step: int, stored_tree, abstract_state) -> None:
    differences = shape_differences(stored_tree, abstract_state)
    if differences:
      raise _RunMismatch(
          f"{self.directory}/{step} holds other shapes than this run's state: "
          f"{'; '.join(differences)}; start a new workdir for another model")

  def read_provenance(self, step: int | None = None) -> dict | None:
    """The provenance JSON saved with ``step`` (default: the latest step)."""
    step = self._manager.latest_step() if step is None else step
    if step is None:
      return None
    return self._read_json(step, "provenance")

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def wait(self) -> None:
    """Block until every started save is committed."""
    if self._mgr is not None:
      self._mgr.wait_until_finished()

  def close(self) -> None:
    if self._mgr is not None:
      self._mgr.close()

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
