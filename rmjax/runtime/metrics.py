"""Metrics to JSONL and TensorBoard (tensorboardX: Flax's writer imports TensorFlow),
and a one-line progress report with steps/s and ETA. With several processes only the
primary one (``rmjax.parallel.distributed.is_primary``) writes and reports: the metrics
are the same global values on every process."""

from __future__ import annotations

import json
import os
import sys
import time

from tensorboardX import SummaryWriter

from rmjax.parallel.distributed import is_primary


class MetricsWriter:

  def __init__(self, workdir: str):
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = is_primary()
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    self._jsonl.flush()
    for name, value in values.items():
      self._tb.add_scalar(f"{split}/{name}", value, step)

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    self._tb.close()


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
