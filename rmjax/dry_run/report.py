"""The dry run's report: a JSON-able dict, its table, and the per-device memory check.

Per device, for each compiled program:
  total = resident state (parameters + optimizer state, exact) + the program's batch
          (exact) + temporaries + outputs that do not reuse a donated input,
the last two from the compiled program's memory analysis (an estimate of the backend
that compiled it: XLA:CPU on fake host devices, or XLA:TPU for a ``dry_run.topology``).
The run's figure is the largest total over its programs.
"""

from __future__ import annotations

GIB = 2**30
HINT = "try more fsdp, remat, bf16 params, a smaller batch with optim.grad_accum"


def gib(n: float) -> str:
  """``n`` bytes in the largest binary unit that keeps it >= 1 (GiB at most)."""
  for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n:.0f} B"


def estimate_of(report: dict) -> str:
  """Whose estimate the temporaries are: the backend, and XLA:CPU's schedule."""
  scheduler = report.get("cpu_scheduler")
  return f"{report['backend']} estimate" + (f", {scheduler} schedule" if scheduler else "")


def program_total(report: dict, program: dict) -> int:
  return (report["parameter_bytes"] + report["optimizer_bytes"] + program["batch_bytes"]
          + program["temp_bytes"] + max(0, program["output_bytes"] - program["alias_bytes"]))


def peak(report: dict) -> tuple[str, int]:
  """(name, per-device bytes) of the program with the largest total."""
  return max(((name, program_total(report, p)) for name, p in report["programs"].items()),
             key=lambda item: item[1])


def format_table(report: dict) -> str:
  """The report as the lines ``rmjax dry-run`` prints."""
  lines = [f"rmjax dry-run: {report['command']} on mesh {report['mesh']} ({report['target']})",
           f"parameter count {report['parameter_count']:,} (every parameter group)",
           f"{'':<48}{'per device':>14}{'global':>14}"]
  for name, group in report["groups"].items():
    label = f"{name} ({group['kind']}, {group['count']:,})"
    lines.append(f"  {label:<46}{gib(group['bytes']):>14}{gib(group['global_bytes']):>14}")
  lines.append(f"  {'all parameters (exact)':<46}{gib(report['parameter_bytes']):>14}")
  lines.append(f"  {'all optimizer state (exact)':<46}{gib(report['optimizer_bytes']):>14}")
  estimate = estimate_of(report)
  for name, p in report["programs"].items():
    lines.append(f"program {name}: lower {p['lower_s']:.1f} s, compile {p['compile_s']:.1f} s")
    rows = [("batch (exact)", p["batch_bytes"]),
            (f"temporaries ({estimate})", p["temp_bytes"]),
            ("arguments (compiled)", p["argument_bytes"]),
            ("outputs (compiled)", p["output_bytes"]),
            ("outputs aliasing donated inputs", p["alias_bytes"]),
            ("total: state + batch + temp + new outputs", program_total(report, p))]
    lines += [f"  {label:<46}{gib(value):>14}" for label, value in rows]
  limit = report["memory_per_device_gib"]
  name, total = peak(report)
  verdict = f"limit {limit:g} GiB" if limit else "no limit set (dry_run.memory_per_device_gib=0)"
  lines.append(f"peak per device: {gib(total)} ({name}); {verdict}")
  return "\n".join(lines)


def limit_problem(report: dict) -> str | None:
  """The message of a run whose peak exceeds ``memory_per_device_gib``, else None."""
  limit = report["memory_per_device_gib"]
  name, total = peak(report)
  if not limit or total <= limit * GIB:
    return None
  p = report["programs"][name]
  return (f"per-device memory {gib(total)} ({name}) exceeds dry_run.memory_per_device_gib="
          f"{limit:g} on mesh {report['mesh']}: parameters {gib(report['parameter_bytes'])}, "
          f"optimizer {gib(report['optimizer_bytes'])}, batch {gib(p['batch_bytes'])}, "
          f"temporaries {gib(p['temp_bytes'])} ({estimate_of(report)}); {HINT}")
