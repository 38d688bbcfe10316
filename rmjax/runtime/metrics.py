"""Metrics to JSONL and TensorBoard (tensorboardX: Flax's writer imports TensorFlow),
and a one-line progress report with steps/s and ETA. With several processes only the
primary one (``rmjax.parallel.distributed.is_primary``) writes and reports: the metrics
are the same global values on every process.

A ``MetricsWriter`` owns its workdir while open: it holds ``<workdir>/rmjax.lock``
(``WorkdirLock``), so that two runs cannot write one workdir at once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
import weakref

import numpy as np
from tensorboardX import SummaryWriter

from rmjax.parallel.distributed import is_primary

LOCK_FILE = "rmjax.lock"
ITEMS_FILE = "per_prompt.jsonl"


class WorkdirInUse(FileExistsError):
  """Another live run holds the workdir's lock file."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


class WorkdirLock:
  """``<workdir>/rmjax.lock``: JSON ``{"pid", "host"}`` of the run writing the workdir.

  Taken by ``acquire`` (a live holder is a one-line ``WorkdirInUse``), removed by
  ``release``. The file is also ``flock``-ed while held, so that two processes taking it
  at the same moment cannot both win, and the kernel frees it when its holder dies. A
  lock left by a dead process (same host, pid not alive) is stale: it is taken over with
  a warning. One from another host cannot be checked from here and counts as live.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None

  def _busy(self, holder: dict) -> WorkdirInUse:
    return WorkdirInUse(
        f"workdir {os.path.dirname(self.path)} is in use by pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')} (lock file {self.path}); wait for that run to end, or "
        "delete the lock file if it is gone")

  def acquire(self) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as error:
        holder = _read_holder(fd)
        if error.errno in (errno.EAGAIN, errno.EACCES):
          os.close(fd)
          raise self._busy(holder) from None
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
          os.close(fd)
          raise
        # A file system without flock: the pid and host below are the only check.
      try:
        same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:  # released (unlinked) between our open and flock
        same_file = False
      if same_file:
        break
      os.close(fd)
    holder = _read_holder(fd)
    if holder:  # left behind: by a dead process, or by this one without close()
      pid = holder.get("pid")
      stale = holder.get("host") == me["host"] and isinstance(pid, int) and (
          pid == me["pid"] or not _alive(pid))
      if not stale:
        os.close(fd)
        raise self._busy(holder)
      warnings.warn(f"taking over the stale lock {self.path} of pid {holder.get('pid')} on "
                    f"{holder.get('host')} (not running, or this process's own)", stacklevel=3)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    # Dropped without release (an exception before close): the flock goes with the
    # object; the file stays, naming this process, and a later acquire takes it over.
    self._finalizer = weakref.finalize(self, os.close, fd)

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.unlink(self.path)  # before unlocking: a waiter then retries on a new file
    except FileNotFoundError:
      pass
    self._finalizer()  # closes the file, which unlocks it
    self._fd = None


def _read_holder(fd: int) -> dict:
  try:
    text = os.pread(fd, 4096, 0).decode()
    holder = json.loads(text) if text.strip() else {}
  except (OSError, ValueError):
    holder = {"pid": "?", "host": "?"}
  return holder if isinstance(holder, dict) else {}


class MetricsWriter:
  """Rows ``{"step", "split", **metrics}`` to ``<workdir>/metrics.jsonl`` and TensorBoard,
  and per-prompt values (``write_items``) to ``<workdir>/per_prompt.jsonl``.

  Holds the workdir lock from construction to ``close``. Resuming: ``drop_after(step)``
  (``runtime.loop.run`` calls it with the step it resumed from) removes the rows of steps
  after ``step`` from both files, which the resumed run writes again, so that each step
  appears once; TensorBoard is told to purge those steps too.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.items_path = os.path.join(workdir, ITEMS_FILE)
    self.enabled = is_primary()
    self._tb, self._purge_step = None, None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._lock = WorkdirLock(workdir)
      self._lock.acquire()
      self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")

  def drop_after(self, step: int) -> None:
    """Remove the rows of steps after ``step`` (and a row cut short by a kill)."""
    if not self.enabled:
      return
    self._jsonl.close()
    _truncate(self.jsonl_path, step)
    _truncate(self.items_path, step)
    self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
    if self._tb is None:
      self._purge_step = step + 1
    # else: already written this session; TensorBoard keeps the later rows of a step

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    self._jsonl.flush()
    if self._tb is None:  # made on first use, so that drop_after can set purge_step
      self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"),
                               purge_step=self._purge_step)
    for name, value in values.items():
      self._tb.add_scalar(f"{split}/{name}", value, step)

  def write_items(self, step: int, split: str, items: dict) -> None:
    """One row ``{"step", "split", name: [values]}`` of per-prompt values (each a 1-D
    array, one entry per prompt of the step's rollout or evaluation)."""
    if not self.enabled:
      return
    row = {"step": step, "split": split,
           **{k: np.asarray(v, np.float64).reshape(-1).tolist() for k, v in items.items()}}
    with open(self.items_path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")

  def close(self) -> None:
    if not self.enabled or self._jsonl.closed:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    self._lock.release()


def _truncate(path: str, step: int) -> None:
  """Keep the rows of ``path`` (JSONL, if it exists) whose step is at most ``step``."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if isinstance(row, dict) and row.get("step", 0) <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def read_metrics(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """Prints ``step/total  steps/s  ETA  metrics`` on one line (a new line when not a TTY)."""

  def __init__(self, start: int, total: int, stream=sys.stderr):
    self.start, self.total, self.stream = start, total, stream
    self.t0 = time.perf_counter()

  def update(self, step: int, metrics: dict) -> None:
    if not is_primary():
      return
    done = step - self.start
    elapsed = time.perf_counter() - self.t0
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    shown = "  ".join(f"{k} {float(v):.4f}" for k, v in metrics.items())
    end = "\r" if self.stream.isatty() else "\n"
    self.stream.write(f"step {step}/{self.total}  {rate:.1f} steps/s  ETA {eta:.0f}s  "
                      f"{shown}{end}")
    self.stream.flush()
