"""When the CLI joins jax.distributed: the mode switch, the environments it recognises and
the settings it refuses (no process is started here; test_multihost.py starts real ones)."""

import pytest

from rmjax.parallel import distributed

ENV = ("RMJAX_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
       "SLURM_NTASKS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES")


@pytest.fixture
def env(monkeypatch):
  for name in ENV:
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


def test_one_process_by_default_and_when_off(env):
  assert distributed.initialize() is False
  env.setenv("RMJAX_DISTRIBUTED", "off")
  env.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
  assert distributed.initialize() is False


def test_recognises_slurm_tpu_slices_and_coordinators(env):
  assert not distributed._several_processes_visible(None)
  env.setenv("SLURM_JOB_ID", "7")
  env.setenv("SLURM_NTASKS", "1")
  assert not distributed._several_processes_visible(None)  # one task: one process
  env.setenv("SLURM_NTASKS", "4")
  assert distributed._several_processes_visible(None)
  env.delenv("SLURM_NTASKS")
  env.setenv("TPU_WORKER_HOSTNAMES", "w-0")
  assert not distributed._several_processes_visible(None)
  env.setenv("TPU_WORKER_HOSTNAMES", "w-0,w-1")
  assert distributed._several_processes_visible(None)
  assert distributed._several_processes_visible("host:1234")


def test_config_wins_over_the_environment(env):
  env.setenv("JAX_NUM_PROCESSES", "4")
  assert distributed._setting({"num_processes": 2}, "num_processes", "JAX_NUM_PROCESSES") == 2
  assert distributed._setting({"num_processes": 0}, "num_processes", "JAX_NUM_PROCESSES") == 4
  assert distributed._setting({"process_id": 0}, "process_id", "JAX_PROCESS_ID") == 0
  assert distributed._setting(None, "process_id", "JAX_PROCESS_ID") is None


def test_bad_settings_are_named(env):
  env.setenv("RMJAX_DISTRIBUTED", "maybe")
  with pytest.raises(ValueError, match="RMJAX_DISTRIBUTED='maybe'"):
    distributed.initialize()
  env.setenv("RMJAX_DISTRIBUTED", "auto")
  with pytest.raises(ValueError, match="both num_processes and process_id"):
    distributed.initialize({"coordinator": "localhost:1234", "num_processes": 2})
