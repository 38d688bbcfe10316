"""``rmjax dry-run``: compile a ``train-rm`` or ``ppo`` config's sharded step for the mesh
of its ``dry_run`` section and print per-device memory (``rmjax.dry_run``); exits non-zero
when ``dry_run.memory_per_device_gib`` would be exceeded."""

from __future__ import annotations

import json
import sys

from rmjax.dry_run import launch, report


def run(config) -> dict:
  result = launch.run(config)  # a bad config raises, and the CLI reports it (exit 2)
  print(report.format_table(result))
  if config.dry_run.get("report"):
    with open(config.dry_run.report, "w") as f:
      json.dump(result, f, indent=1)
  problem = report.limit_problem(result)
  if problem:
    sys.exit(f"rmjax dry-run: {problem}")
  return result
