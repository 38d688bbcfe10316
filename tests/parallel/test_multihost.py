"""Two processes on localhost (4 CPU devices each, gloo collectives) train the same reward
model as one process with 8 devices: the same losses, and a resume after killing both;
then the same for two PPO iterations against that reward model.

Each run is ``rmjax train-rm`` in fresh processes, started by ``rmjax.parallel.distributed``
from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

STEPS, SAVE_EVERY = 12, 4
OVERRIDES = dict(steps=STEPS, log_every=1, eval_every=STEPS, save_every=SAVE_EVERY,
                 batch_size=16)
MODEL = dict(d_model=32, d_ff=64)
DATA = dict(num_train_pairs=200, num_eval_pairs=32)


PPO = dict(iterations=2, prompts=8, samples_per_prompt=2, max_new_tokens=8, minibatches=2)
MESH = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]


def _command(workdir) -> list[str]:
  args = [f"--config.train.workdir={workdir}", *MESH]
  args += [f"--config.train.{k}={v}" for k, v in OVERRIDES.items()]
  args += [f"--config.model.{k}={v}" for k, v in MODEL.items()]
  args += [f"--config.data.synthetic.{k}={v}" for k, v in DATA.items()]
  return [sys.executable, "-m", "rmjax.cli", "train-rm", *args]


def _ppo_command(workdir, reward_run) -> list[str]:
  args = [f"--config.train.workdir={workdir}", "--config.train.log_every=1",
          f"--config.reward.workdirs=('{reward_run}',)", *MESH]
  args += [f"--config.rl.{k}={v}" for k, v in PPO.items()]
  return [sys.executable, "-m", "rmjax.cli", "rl", *args]


def _env(devices: int, cache, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **extra)
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_pair(workdir, cache, logs, command=_command) -> list[subprocess.Popen]:
  port = _free_port()
  procs = []
  for rank in range(2):
    env = _env(4, cache, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(rank))
    log = open(logs / f"process{rank}.log", "a", encoding="utf-8")
    procs.append(subprocess.Popen(command(workdir), env=env, stdout=log,
                                  stderr=subprocess.STDOUT))
  return procs


def _rows(workdir) -> list[dict]:
  with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _losses(workdir) -> dict[int, float]:
  """step -> train loss; a step logged twice (before a kill and after the resume) keeps
  its last value."""
  return {r["step"]: r["loss"] for r in _rows(workdir) if r["split"] == "train"}


def _committed_steps(workdir) -> set[int]:
  folder = workdir / "checkpoints"
  return {int(p.name) for p in folder.iterdir() if p.name.isdigit()} if folder.exists() else set()


def _wait(procs, logs, timeout=400) -> None:
  for proc in procs:
    proc.wait(timeout=timeout)
  codes = [proc.returncode for proc in procs]
  if any(codes):
    text = "\n".join((logs / f"process{r}.log").read_text()[-3000:] for r in range(2))
    pytest.fail(f"exit codes {codes}:\n{text}")


@pytest.mark.slow
def test_two_processes_match_one_and_resume_after_kill_rm_then_ppo(tmp_path):
  cache, logs = tmp_path / "cache", tmp_path / "logs"
  logs.mkdir()
  single = tmp_path / "single"
  subprocess.run(_command(single), env=_env(8, cache), check=True, capture_output=True,
                 timeout=400)
  reference = _losses(single)
  assert sorted(reference) == list(range(1, STEPS + 1))

  multi = tmp_path / "multi"
  procs = _start_pair(multi, cache, logs)
  deadline = time.monotonic() + 400
  while SAVE_EVERY not in _committed_steps(multi):  # the first checkpoint is committed
    assert all(p.poll() is None for p in procs), "a process ended before the first checkpoint"
    assert time.monotonic() < deadline, "no checkpoint within 400 s"
    time.sleep(0.05)
  for proc in procs:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  killed_at = max(_losses(multi))
  assert killed_at < STEPS, "the run finished before the kill; nothing was resumed"

  _wait(_start_pair(multi, cache, logs), logs)
  log0 = (logs / "process0.log").read_text()
  assert "resumed from step" in log0
  losses = _losses(multi)
  steps = list(range(1, STEPS + 1))
  assert sorted(losses) == steps
  np.testing.assert_allclose([losses[s] for s in steps], [reference[s] for s in steps],
                             rtol=1e-5)

  # PPO against the reward model: the same sampled episodes and metrics in two processes.
  ppo_single = tmp_path / "ppo_single"
  subprocess.run(_ppo_command(ppo_single, single), env=_env(8, cache), check=True,
                 capture_output=True, timeout=400)
  _wait(_start_pair(tmp_path / "ppo_multi", cache, logs,
                    command=lambda w: _ppo_command(w, single)), logs)
  want, got = _rows(ppo_single), _rows(tmp_path / "ppo_multi")
  assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2]
  for w, g in zip(want, got):
    assert w["response_length"] == g["response_length"]  # the same samples
    names = sorted(k for k in w if k not in ("step", "split"))
    # rtol 1e-4: summed over devices in another order, gradients differ in the 6th digit
    np.testing.assert_allclose([g[k] for k in names], [w[k] for k in names], rtol=1e-4,
                               atol=1e-6, err_msg=str(names))


PROCESS_LOCAL_WORKER = """
import numpy as np
from jax.experimental import multihost_utils
from rmjax import parallel
from rmjax.parallel import distributed
assert distributed.initialize()
mesh = parallel.make_mesh((2, 2, 2))
rank = distributed.jax.process_index()
rows = np.arange(4 * 3, dtype=np.float32).reshape(4, 3) + 100 * rank  # this process's rows
local = parallel.shard_batch({"x": rows}, mesh, process_local=True)["x"]
whole = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)  # the same global batch everywhere
placed = parallel.shard_batch({"x": whole}, mesh)["x"]
print("SHAPES", local.shape, placed.shape)
print("LOCAL", multihost_utils.process_allgather(local, tiled=True).tolist())
print("GLOBAL", parallel.sharding.to_host(placed).tolist())
"""


@pytest.mark.slow
def test_process_local_rows_form_the_global_batch(tmp_path):
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-c", PROCESS_LOCAL_WORKER], stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True,
      env=_env(4, tmp_path, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(rank))) for rank in range(2)]
  outputs = [proc.communicate(timeout=300)[0] for proc in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  for out in outputs:
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()
             if line.startswith(("SHAPES", "LOCAL", "GLOBAL"))}
    assert lines["SHAPES"] == "(8, 3) (8, 3)"
    expected_local = np.concatenate([np.arange(12).reshape(4, 3) + 100 * r for r in range(2)])
    np.testing.assert_array_equal(json.loads(lines["LOCAL"]), expected_local)
    np.testing.assert_array_equal(json.loads(lines["GLOBAL"]), np.arange(24).reshape(8, 3))
