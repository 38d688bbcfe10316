"""The exact-resume check the trainers' tests share: a run killed by SIGKILL right after a
checkpoint commits, then resumed, must end bit-identical to an unbroken run."""

import os
import subprocess
import sys

import jax
import numpy as np
from orbax.checkpoint import PyTreeCheckpointer

from rmjax.runtime.checkpoint import Checkpointer
from rmjax.runtime.metrics import ITEMS_FILE, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# argv: workdir, the step to die after (0 = never), then the body's own arguments.
_HOOK = """
import os, sys, signal
sys.path[:0] = {paths!r}
from rmjax.runtime import checkpoint
kill_at = int(sys.argv[2])
if kill_at:
  real_save = checkpoint.Checkpointer.save
  def save(self, step, *args, **kwargs):
    saved = real_save(self, step, *args, **kwargs)
    if saved and step == kill_at:
      self.wait()  # the checkpoint of kill_at is committed: die without cleanup
      os.kill(os.getpid(), signal.SIGKILL)
    return saved
  checkpoint.Checkpointer.save = save
"""


def check(tmp_path, body: str, here: str, kill_at: int, final: int, resumed: str,
          extra_args=()) -> None:
  """Run ``body`` (Python training ``sys.argv[1]``'s workdir to step ``final``) unbroken,
  then killed after step ``kill_at`` and rerun; assert the rerun printed ``resumed`` and
  that both final checkpoints, last metrics rows and per-prompt records are identical. One
  CPU device."""
  script = tmp_path / "run.py"
  script.write_text(_HOOK.format(paths=[ROOT, os.path.dirname(os.path.abspath(__file__)), here])
                    + body)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = lambda workdir, kill: subprocess.run(
      [sys.executable, str(script), str(workdir), str(kill), *map(str, extra_args)],
      capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  assert run(straight, 0).returncode == 0
  first = run(killed, kill_at)
  assert first.returncode == -9, first.stderr[-2000:]
  assert Checkpointer(killed / "checkpoints").all_steps()[-1] == kill_at
  second = run(killed, 0)
  assert second.returncode == 0, second.stderr[-2000:]
  assert resumed in second.stdout
  state = lambda d: PyTreeCheckpointer().restore(str(d / "checkpoints" / str(final) / "state"))
  a, b = state(straight), state(killed)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  rows = lambda d: list(read_metrics(str(d / "metrics.jsonl")))
  assert rows(straight)[-1] == rows(killed)[-1]
  # Per-prompt records (a task with gold): every step once, as the unbroken run wrote them.
  items = lambda d: (list(read_metrics(str(d / ITEMS_FILE)))
                     if (d / ITEMS_FILE).exists() else None)
  assert items(straight) == items(killed)
