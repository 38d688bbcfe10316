"""Multi-host start-up: one process per host (or per GPU) joined by ``jax.distributed``.

Every process runs the same command; after ``initialize`` ``jax.devices()`` lists the
devices of all processes, the mesh spans them, and each process feeds and reads only
its own devices (``rmjax.parallel.sharding.shard_batch``).

When to start (``RMJAX_DISTRIBUTED``):
  * ``auto`` (default): when this process is visibly one of several: an explicit
    coordinator (config or ``JAX_COORDINATOR_ADDRESS``), a SLURM step with more than
    one task, or a TPU VM slice with more than one worker (``TPU_WORKER_HOSTNAMES``);
  * ``on``: always (JAX detects TPU VMs, SLURM, Open MPI and Kubernetes itself);
  * ``off``: never (one process, whatever the environment says).

Explicit settings, from a config's ``distributed`` section or the environment
(config first): ``coordinator`` / ``JAX_COORDINATOR_ADDRESS`` ("host:port" of process
0), ``num_processes`` / ``JAX_NUM_PROCESSES``, ``process_id`` / ``JAX_PROCESS_ID``.
On CPU the processes' collectives go through gloo (JAX's default for CPU).
"""

from __future__ import annotations

import os

import jax

MODES = ("auto", "on", "off")


_UNSET = {"coordinator": "", "num_processes": 0, "process_id": -1}  # config values


def _setting(cfg, field: str, env: str):
  """The config's value of ``field`` if set there, else the environment's, else None."""
  value = cfg.get(field, _UNSET[field]) if cfg is not None else _UNSET[field]
  if value != _UNSET[field]:
    return value
  raw = os.environ.get(env, "")
  if not raw:
    return None
  return raw if field == "coordinator" else int(raw)


def _several_processes_visible(coordinator) -> bool:
  if coordinator:
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return True
  return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize(cfg=None) -> bool:
  """Join the other processes of this run if there are any; True if it did.

  ``cfg``: an optional ``distributed`` config section (coordinator, num_processes,
  process_id). Call once, before anything touches a device.
  """
  mode = os.environ.get("RMJAX_DISTRIBUTED", "auto").strip().lower()
  if mode not in MODES:
    raise ValueError(f"RMJAX_DISTRIBUTED={mode!r} must be one of {MODES}")
  if mode == "off" or jax.distributed.is_initialized():
    return False
  coordinator = _setting(cfg, "coordinator", "JAX_COORDINATOR_ADDRESS")
  if mode == "auto" and not _several_processes_visible(coordinator):
    return False
  num_processes = _setting(cfg, "num_processes", "JAX_NUM_PROCESSES")
  process_id = _setting(cfg, "process_id", "JAX_PROCESS_ID")
  if coordinator and (num_processes is None) != (process_id is None):
    raise ValueError("distributed: give both num_processes and process_id (or neither, "
                     f"to let JAX detect them); got num_processes={num_processes}, "
                     f"process_id={process_id}")
  jax.distributed.initialize(coordinator_address=coordinator or None,
                             num_processes=num_processes, process_id=process_id)
  return True


def is_primary() -> bool:
  """True on the process that writes shared files (metrics, plots, provenance)."""
  return jax.process_index() == 0
