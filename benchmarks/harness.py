"""The part every benchmark shares: each side in its own subprocess, rounds alternating
the order (ours, peer | peer, ours | ...), the child's last stdout line read as JSON."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile

SIDES = ("ours", "peer")


def run_side(script: str, side: str, args, flags) -> dict:
  """Run ``script --side side`` with ``args``' ``flags`` (and cache_dir) passed on."""
  cmd = [sys.executable, script, "--side", side]
  for flag in (*flags, "cache_dir"):
    cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def alternating_rounds(script: str, args, flags, describe,
                       sides: tuple[str, ...] = SIDES) -> dict[str, list[dict]]:
  """``args.rounds`` rounds of one fresh child per side; ``describe(result)`` is printed
  to stderr after each. Children share a temporary XLA compilation cache (``cache_dir``)
  only to shorten the wall time."""
  runs = {side: [] for side in sides}
  with tempfile.TemporaryDirectory(prefix="rmjax-bench-xla-") as args.cache_dir:
    for r in range(args.rounds):
      for side in sides if r % 2 == 0 else sides[::-1]:
        runs[side].append(run_side(script, side, args, flags))
        print(f"round {r + 1}/{args.rounds} {side}: {describe(runs[side][-1])}",
              file=sys.stderr)
  return runs


def median_over(runs: dict[str, list[dict]], side: str, key: str) -> float:
  """Median of ``key``'s values over all of ``side``'s children."""
  return statistics.median(t for child in runs[side] for t in child[key])
