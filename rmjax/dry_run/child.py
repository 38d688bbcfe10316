"""The dry run's child process: ``python -m rmjax.dry_run.child CONFIG.json REPORT.json``.

Started by ``launch.run`` with as many fake host devices as the target mesh has
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``, ``JAX_PLATFORMS=cpu``), or with
``dry_run.topology`` set, over a TPU topology's compile-only devices (libtpu needed, no
TPU). It builds the plan abstractly (``programs``), lowers and compiles every program and
writes the report (``report.py``), or ``{"error": message}`` for a config error.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import sys
import time

import jax
import ml_collections

from rmjax import parallel
from rmjax.dry_run import programs


def per_device_bytes(tree) -> int:
  """The largest, over devices, of the bytes that device holds of ``tree``'s arrays
  (ShapeDtypeStructs with shardings): exact, from each shard's shape and dtype."""
  totals = collections.Counter()
  for x in jax.tree.leaves(tree):
    for device, index in x.sharding.devices_indices_map(x.shape).items():
      shard = [len(range(*s.indices(n))) for s, n in zip(index, x.shape)]
      totals[device.id] += math.prod(shard) * x.dtype.itemsize
  return max(totals.values(), default=0)


def global_bytes(tree) -> int:
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def target_devices(topology: str):
  """(devices, description): the local (fake) devices, or a TPU topology's
  compile-only devices when ``topology`` (e.g. "v5p:4x4x2") is set."""
  if not topology:
    devices = jax.devices()
    return devices, f"{len(devices)} fake {devices[0].platform.upper()} devices"
  if importlib.util.find_spec("libtpu") is None:
    raise ValueError(f"dry_run.topology={topology!r} needs libtpu (pip install 'jax[tpu]') to "
                     "compile for a TPU without one; it is not installed here. Leave "
                     "dry_run.topology empty to compile for fake CPU devices instead")
  from jax.experimental import topologies
  devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
  return devices, f"TPU topology {topology}: {len(devices)} compile-only devices"


def analyse(config) -> dict:
  """Build, lower and compile ``config``'s programs; the report (see ``report.py``)."""
  dr = config.dry_run
  devices, target = target_devices(dr.get("topology", ""))
  mesh = parallel.make_mesh(parallel.MeshConfig(**config.mesh), list(devices))
  plan = programs.build(config, mesh)
  groups = {name: {"kind": kind, "count": sum(math.prod(x.shape) for x in jax.tree.leaves(tree)),
                   "bytes": per_device_bytes(tree), "global_bytes": global_bytes(tree)}
            for name, (kind, tree) in plan.resident.items()}
  report = {"command": dr.command, "mesh": dict(mesh.shape), "target": target,
            "backend": devices[0].platform.upper(), "groups": groups,
            "memory_per_device_gib": float(dr.memory_per_device_gib), "programs": {}}
  of_kind = lambda kind: [tree for k, tree in plan.resident.values() if k == kind]
  report["parameter_bytes"] = per_device_bytes(of_kind(programs.PARAMETERS))
  report["optimizer_bytes"] = per_device_bytes(of_kind(programs.OPTIMIZER))
  report["parameter_count"] = sum(g["count"] for g in groups.values()
                                  if g["kind"] == programs.PARAMETERS)
  for program in plan.programs:
    start = time.perf_counter()
    lowered = program.jitted.lower(*program.args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    memory = compiled.memory_analysis()
    report["programs"][program.name] = {
        "lower_s": lowered_at - start, "compile_s": done - lowered_at,
        "batch_bytes": per_device_bytes(program.batch),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes)}
  return report


def main(argv: list[str]) -> None:
  config_path, report_path = argv[1:3]
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  try:
    report = analyse(config)
  except ValueError as error:  # a config error, said plainly; anything else is a traceback
    report = {"error": str(error)}
  with open(report_path, "w") as f:
    json.dump(report, f, indent=1)


if __name__ == "__main__":
  main(sys.argv)
