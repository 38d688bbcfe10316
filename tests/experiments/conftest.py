"""What every experiment test shares: running a script at a tiny size, and checking JSON."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def experiment_jax_cache(tmp_path_factory):
  """One persistent compilation cache for every experiment run of the session: the runs
  inside an experiment repeat their programs, and every experiment builds the same
  synthetic task (its sampler and gold reward compile once, not once per test)."""
  return tmp_path_factory.mktemp("experiment_jax_cache")


@pytest.fixture
def run_experiment(experiment_jax_cache):
  """``run(name, flags, timeout)``: ``experiments/<name>.py`` with its own config and
  ``--config.<k>=<v>`` flags, in a subprocess on one CPU device (the suite's eight fake
  devices would only split tiny batches) with the session's persistent compilation cache.
  Fails with its stderr unless it exits 0; returns the completed process."""

  def run(name: str, flags: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_COMPILATION_CACHE_DIR=str(experiment_jax_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    cmd = [sys.executable, str(ROOT / "experiments" / f"{name}.py"),
           f"--config={ROOT / 'experiments' / 'configs' / f'{name}.py'}",
           *(f"--config.{k}={v}" for k, v in flags.items())]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc

  return run


def _finite(obj) -> bool:
  if isinstance(obj, dict):
    return all(_finite(v) for v in obj.values())
  if isinstance(obj, list):
    return all(_finite(v) for v in obj)
  return not isinstance(obj, float) or obj == obj and abs(obj) != float("inf")


@pytest.fixture
def all_finite():
  """``all_finite(parsed_json)``: every number is finite (json.load reads NaN/Infinity
  as floats)."""
  return _finite
