"""End to end: experiments/overoptimization_ppo.py at a tiny size writes well-formed outputs."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
OBJECTIVES = ("single", "wco", "uwo")
KL_COEFS = ("0", "0.2")
ITERATIONS = 2


def _finite(obj):
  """Every number in parsed JSON is finite (json.load reads NaN/Infinity as floats)."""
  if isinstance(obj, dict):
    return all(_finite(v) for v in obj.values())
  if isinstance(obj, list):
    return all(_finite(v) for v in obj)
  return not isinstance(obj, float) or obj == obj and abs(obj) != float("inf")


@pytest.mark.slow
def test_tiny_run_writes_table_json_and_plot(tmp_path):
  workdir = tmp_path / "run"
  flags = {"workdir": workdir, "seeds": "(0,)", "kl_coefs": "(0.0,0.2)",
           "task.num_train_pairs": 64, "task.num_eval_pairs": 16, "norm.prompts": 4,
           "norm.samples": 4, "proxy.ensemble.k": 2, "proxy.train.steps": 8,
           "proxy.train.batch_size": 8, "proxy.optim.warmup_steps": 2,
           "proxy.model.d_model": 16, "proxy.model.d_ff": 32,
           "ppo.ppo.iterations": ITERATIONS, "ppo.ppo.prompts": 2,
           "ppo.ppo.samples_per_prompt": 2}
  # One CPU device: the suite's eight fake devices would only split a tiny batch. The six
  # PPO runs build the same programs: a persistent compilation cache compiles them once.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  cmd = [sys.executable, str(ROOT / "experiments" / "overoptimization_ppo.py"),
         f"--config={ROOT / 'experiments' / 'configs' / 'overoptimization_ppo.py'}",
         *(f"--config.{k}={v}" for k, v in flags.items())]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "KL coefficient 0.2" in proc.stdout and "Largest gold gain" in proc.stdout

  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted((r["objective"], float(r["kl_coef"])) for r in rows) == sorted(
      (o, float(k)) for o in OBJECTIVES for k in KL_COEFS)
  markdown = (workdir / "results.md").read_text().splitlines()
  assert len(markdown) == 2 + len(OBJECTIVES) * len(KL_COEFS)
  with open(workdir / "curves.csv") as f:
    curves = list(csv.DictReader(f))
  assert len(curves) == len(OBJECTIVES) * len(KL_COEFS) * ITERATIONS

  result = json.loads((workdir / "results.json").read_text())
  assert _finite(result)
  assert set(result["runs"]) == {f"{o}/{k}" for o in OBJECTIVES for k in KL_COEFS}
  for entry in result["runs"].values():
    for key in ("gold", "score", "kl_half_squared"):
      assert len(entry[f"{key}_per_seed"]) == 1  # one seed
      assert len(entry[f"{key}_per_seed"][0]) == ITERATIONS
      assert len(entry[key]["mean"]) == ITERATIONS
    assert entry["kl_half_squared"]["mean"][0] == pytest.approx(0.0, abs=1e-5)  # π = π_ref
    assert {"final_gold", "peak_gold", "final_kl"} <= set(entry)
  proxy = result["proxies"]["0"]
  assert len(proxy["norm_mu"]) == len(proxy["norm_sigma"]) == 2  # one per member

  for name in ("gold_vs_kl.png", "gold_vs_iteration.png"):
    png = (workdir / name).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
