"""The part every benchmark shares: each side in its own subprocess, rounds alternating
the order (ours, peer | peer, ours | ...), the child's last stdout line read as JSON."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

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


def peak_rss_mb() -> float:
  """This process's peak resident memory (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_busy_pct(seconds: float = 5.0) -> float | None:
  """Share of all cores busy over ``seconds`` (Linux /proc/stat), i.e. other processes
  while this one sleeps; None where /proc/stat is missing."""
  def sample():
    with open("/proc/stat") as f:
      ticks = [int(x) for x in f.readline().split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait
  try:
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
  except OSError:
    return None
  return 100.0 * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def warn_if_busy() -> dict:
  """Measure how busy the machine is before a run and warn on stderr when other
  processes are running; returns the figures for the JSON."""
  load, busy = os.getloadavg()[0], cpu_busy_pct()
  # The load average lags (a job that just ended still shows), so judge by busy time.
  judged = busy if busy is not None else 100 * load / os.cpu_count()
  if judged > 10:
    print(f"warning: CPUs {judged:.0f}% busy before the run (1-min load {load:.1f} on "
          f"{os.cpu_count()} cores): other processes are running; the figures are "
          "preliminary", file=sys.stderr)
  return dict(load_avg_1min=load, cpu_busy_pct_5s=busy)


def machine_limits() -> dict:
  """What the hardware allows, measured with jitted JAX in this process: the float32
  matmul peak (2048^3, FLOP/s) and the memory read bandwidth (bytes/s of a sum over
  256 MiB, what a decode step mostly does); medians of 5."""
  import jax
  import jax.numpy as jnp
  n = 2048
  a, b = (jax.random.normal(k, (n, n), jnp.float32) for k in jax.random.split(jax.random.key(1)))
  matmul = jax.jit(jnp.matmul)
  big = jnp.zeros((64 * 2**20,), jnp.float32)
  total = jax.jit(jnp.sum)

  def median_s(fn):
    jax.block_until_ready(fn())
    times = []
    for _ in range(5):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times.append(time.perf_counter() - start)
    return statistics.median(times)
  return dict(matmul_flops_per_s=2.0 * n**3 / median_s(lambda: matmul(a, b)),
              memory_bytes_per_s=big.nbytes / median_s(lambda: total(big)))
