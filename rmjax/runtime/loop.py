"""The one training loop every program runs: resume, step, log, evaluate, save, stop.

A program (the RM trainer, the feature trainer, PPO, and the trainers to come) hands
``run`` its compiled step, its state, a function from the step index to that step's data,
and hooks; the loop owns everything else:

- resume from the latest checkpoint (onto ``restore_target``'s shardings), after the
  checkpointer has checked that it holds this run (``runtime.checkpoint``), and drop the
  metrics rows of the steps it will redo (``MetricsWriter.drop_after``);
- a finiteness check after every step: ``check_finite`` reads the metrics the program
  names and the ``FINITE`` flag a step computes over its updated parameters
  (``all_finite``), and stops the run *before* that state can be saved, so the last
  checkpoint is always finite;
- means over each logging window to the metrics writer and the progress line; per-prompt
  values a step or an evaluation returns under ``ITEMS`` go to ``writer.write_items`` as
  they are, every step (the intervals of ``experiments/`` resample prompts);
- the eval hook every ``eval_every`` steps and at the end;
- periodic saves, a forced save at the end, and a save then ``Preempted`` on SIGTERM.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The metric a step sets to "every updated parameter is finite" (``all_finite``).
FINITE = "finite"
# The metric holding {name: [prompts] array} of per-prompt values (never averaged).
ITEMS = "per_prompt"


class NonFiniteError(FloatingPointError):
  """A step produced a non-finite loss or parameters; the run stopped before saving it."""


class Preempted(Exception):
  """SIGTERM arrived; the state of ``step`` was saved and the run stopped early."""

  def __init__(self, step: int):
    super().__init__(f"stopped by SIGTERM after step {step} (saved; rerun to resume)")
    self.step = step


def all_finite(tree) -> jax.Array:
  """Scalar bool: every floating-point leaf of ``tree`` is finite (computed on device,
  inside the step, so no parameter leaves it)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def check_finite(metrics: dict, keys: Sequence[str], step: int, unit: str = "step") -> None:
  """Raise ``NonFiniteError`` if ``metrics[FINITE]`` is false or a metric in ``keys`` is
  NaN or infinite; the message names the step and the metric."""
  if FINITE in metrics and not bool(metrics[FINITE]):
    raise NonFiniteError(f"non-finite parameters after {unit} {step}; the run stopped and "
                         "the last finite checkpoint is kept")
  for key in keys:
    value = float(metrics[key])
    if not math.isfinite(value):
      raise NonFiniteError(f"non-finite {key} {value} at {unit} {step}; the run stopped and "
                           "the last finite checkpoint is kept")


@dataclasses.dataclass
class Result:
  state: Any
  start: int  # the step the run resumed from (0: a fresh run)
  metrics: dict  # the last logged window's means
  eval: dict  # the last evaluation


def run(*, state, step_fn: Callable, batches: Callable[[int], Any], steps: int,
        checkpointer, writer, progress, log_every: int = 1, eval_every: int = 0,
        evaluate: Callable[[Any], dict] | None = None, restore_target=None,
        finite_keys: Sequence[str] = ("loss",), progress_keys: Sequence[str] = ("loss",),
        extra: Callable[[int], dict] | None = None, unit: str = "step",
        on_resume: Callable[[int], None] | None = None,
        progress_every: int | None = None) -> Result:
  """Run ``state, metrics = step_fn(state, batches(i))`` for i in [start, steps).

  ``checkpointer``: a ``runtime.checkpoint.Checkpointer`` (``restore_target``: the
  abstract state to restore onto; None: never resume). ``writer``: a ``MetricsWriter``;
  ``progress``: a ``Progress`` (its ``start`` is set on resume). ``extra(done)``: the JSON
  saved with each checkpoint. ``eval_every=0`` evaluates only at the end. The progress
  line shows the last logged window every ``progress_every`` steps (default ``log_every``). Returns the
  final state and metrics; raises ``NonFiniteError`` or ``Preempted``.

  With a ``restore_target``, the rows ``writer`` holds for steps after the resume point
  (0 for a fresh start) are dropped (``writer.drop_after``, where the writer has it):
  they come from a run that stopped after its last checkpoint, and are written again.
  """
  start = 0
  window, means, eval_metrics = [], {}, {}
  preempted_at = None
  try:  # from here on the writer (and its workdir lock) is closed however the run ends
    if restore_target is not None:
      restored = checkpointer.restore_latest(restore_target)
      if restored is not None:
        start, state, _ = restored
        progress.start = start
        if on_resume is not None:
          on_resume(start)
      drop_after = getattr(writer, "drop_after", None)
      if drop_after is not None:
        drop_after(start)
    with checkpointer.install_sigterm_handler():
      for step in range(start, steps):
        state, metrics = step_fn(state, batches(step))
        metrics = jax.device_get(metrics)
        done = step + 1
        check_finite(metrics, finite_keys, done, unit)
        if ITEMS in metrics:
          writer.write_items(done, "train", metrics[ITEMS])
        window.append({k: v for k, v in metrics.items() if k not in (FINITE, ITEMS)})
        last = done == steps
        if done % log_every == 0 or last:  # means over the logging window
          means = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
          window = []
          writer.write(done, "train", means)
        if done % (progress_every or log_every) == 0 or last:
          progress.update(done, {k: means[k] for k in progress_keys if k in means})
        if evaluate is not None and ((eval_every and done % eval_every == 0) or last):
          eval_metrics = dict(evaluate(state))
          if ITEMS in eval_metrics:
            writer.write_items(done, "eval", eval_metrics.pop(ITEMS))
          writer.write(done, "eval", eval_metrics)
        checkpointer.save(done, state, extra(done) if extra else {"data_step": done},
                          force=last or checkpointer.preempted)
        if checkpointer.preempted:
          preempted_at = done
          break
  finally:  # a failing run still commits the checkpoints it started
    checkpointer.wait()
    checkpointer.close()
    writer.close()
  if preempted_at is not None:
    raise Preempted(preempted_at)
  return Result(state=state, start=start, metrics=means, eval=eval_metrics)
