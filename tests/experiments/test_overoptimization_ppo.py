"""End to end: experiments/overoptimization_ppo.py at a tiny size writes well-formed outputs."""

import csv
import json

import pytest

OBJECTIVES = ("single", "wco", "uwo")
KL_COEFS = ("0", "0.2")
ITERATIONS = 2


@pytest.mark.slow
def test_tiny_run_writes_table_json_and_plot(tmp_path, run_experiment, all_finite):
  workdir = tmp_path / "run"
  flags = {"workdir": workdir, "seeds": "(0,)", "kl_coefs": "(0.0,0.2)",
           "task.num_train_pairs": 64, "task.num_eval_pairs": 16, "norm.prompts": 4,
           "norm.samples": 4, "proxy.ensemble.k": 2, "proxy.train.steps": 8,
           "proxy.train.batch_size": 8, "proxy.optim.warmup_steps": 2,
           "proxy.model.d_model": 16, "proxy.model.d_ff": 32,
           "ppo.ppo.iterations": ITERATIONS, "ppo.ppo.prompts": 2,
           "ppo.ppo.samples_per_prompt": 2}
  proc = run_experiment("overoptimization_ppo", flags, timeout=600)
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
  assert all_finite(result)
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
