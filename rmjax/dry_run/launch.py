"""Start the dry run's child process with the target mesh's devices and read its report.

The child needs its own process: XLA fixes the number of fake host devices when its CPU
backend starts, and the target mesh (32 devices for a v5p-64) is rarely what this
process has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from rmjax.parallel.mesh import CONFIG_AXES, resolve_shape

COMMANDS = ("train-rm", "rl")
DEVICE_FLAG = "--xla_force_host_platform_device_count"
# dry_run.cpu_scheduler -> XLA:CPU's scheduler. "memory" (the default) orders ops to keep
# fewer buffers alive, as an accelerator's scheduler does; "concurrency", XLA:CPU's own
# default, runs independent ops side by side and keeps their buffers alive, and ignores
# remat: an 8-layer model's step reported the same temporaries with or without remat
# under it, and fewer with remat than without under "memory". Neither is
# always lower (benchmarks/README.md, "Dry run"): compare both when a figure is close.
SCHEDULER_FLAG = "--xla_cpu_scheduler_type"
SCHEDULERS = {"memory": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
              "concurrency": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED"}


def check(config) -> None:
  """Config errors found before any process starts, said in the config's terms."""
  dr = config.get("dry_run")
  if dr is None:
    raise ValueError("the config has no dry_run section (command, devices, "
                     "memory_per_device_gib, vocab_size, ...): see rmjax/configs/dry_run.py")
  if dr.command not in COMMANDS:
    raise ValueError(f"dry_run.command={dr.command!r} is not one of {COMMANDS}")
  if dr.devices < 1:
    raise ValueError(f"dry_run.devices={dr.devices} must be >= 1")
  if dr.get("cpu_scheduler", "memory") not in SCHEDULERS:
    raise ValueError(f"dry_run.cpu_scheduler={dr.cpu_scheduler!r} is not one of "
                     f"{tuple(SCHEDULERS)}")
  shape = tuple(config.mesh.get(a, 1) for a in CONFIG_AXES)
  try:
    resolve_shape(shape, dr.devices)
  except ValueError as error:
    raise ValueError(f"{error} (dry_run.devices={dr.devices})") from None


def child_env(devices: int, scheduler: str = "memory") -> dict[str, str]:
  """This process's environment with ``devices`` fake CPU devices instead of its own and
  XLA:CPU's ``scheduler`` (a ``SCHEDULERS`` key)."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith((DEVICE_FLAG, SCHEDULER_FLAG))]
  flags += [f"{DEVICE_FLAG}={devices}", f"{SCHEDULER_FLAG}={SCHEDULERS[scheduler]}"]
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))


def run(config, timeout_s: float | None = None) -> dict:
  """The child's report of ``config``; ValueError for a config error, RuntimeError
  (with the child's last output) when the child fails otherwise."""
  check(config)
  with tempfile.TemporaryDirectory(prefix="rmjax_dry_run_") as tmp:
    config_path, report_path = os.path.join(tmp, "config.json"), os.path.join(tmp, "report.json")
    with open(config_path, "w") as f:
      f.write(config.to_json())
    result = subprocess.run(
        [sys.executable, "-m", "rmjax.dry_run.child", config_path, report_path],
        env=child_env(config.dry_run.devices, config.dry_run.get("cpu_scheduler", "memory")),
        capture_output=True, text=True,
        timeout=timeout_s)
    if result.returncode or not os.path.exists(report_path):
      raise RuntimeError(f"the dry run's child process failed (exit {result.returncode}):\n"
                         f"{result.stderr[-3000:]}")
    with open(report_path) as f:
      report = json.load(f)
  if "error" in report:
    raise ValueError(report["error"])
  if report["backend"] == "CPU":
    report["cpu_scheduler"] = config.dry_run.get("cpu_scheduler", "memory")
  return report
