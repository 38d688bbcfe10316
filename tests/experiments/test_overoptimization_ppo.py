"""End to end: experiments/overoptimization_ppo.py at a tiny size: the runs share their first
samples, the objectives order as their definitions require, PPO moves the policy and the
KL coefficient changes the run once the policy has left the reference."""

import csv
import json

import numpy as np
import pytest

OBJECTIVES = ("single", "wco", "uwo")
KL_COEFS = ("0", "0.2")
ITERATIONS = 3  # the KL penalty is zero in iteration 1 (π = π_ref) and acts from 2 on


@pytest.mark.slow
def test_tiny_run_objectives_order_and_kl_penalty_acts(tmp_path, run_experiment, all_finite):
  workdir = tmp_path / "run"
  flags = {"workdir": workdir, "seeds": "(0,)", "kl_coefs": "(0.0,0.2)",
           "task.num_train_pairs": 64, "task.num_eval_pairs": 16, "norm.prompts": 4,
           "norm.samples": 4, "proxy.ensemble.k": 2, "proxy.train.steps": 8,
           "proxy.train.batch_size": 8, "proxy.optim.warmup_steps": 2,
           "proxy.model.d_model": 16, "proxy.model.d_ff": 32,
           "proxy.model.n_layers": 1,
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
  runs = {name: {key: np.asarray(entry[f"{key}_per_seed"][0]) for key in
                 ("gold", "score", "kl_half_squared")} for name, entry in result["runs"].items()}
  for name, curve in runs.items():
    assert all(len(v) == ITERATIONS for v in curve.values()), name
    # Iteration 1 samples π = π_ref (KL 0); PPO's update then moves the policy.
    kl = curve["kl_half_squared"]
    assert abs(kl[0]) < 1e-5 and kl[1] > 1e-4, (name, kl)
    # Every run of a seed starts from the same samples.
    assert curve["gold"][0] == pytest.approx(runs["single/0"]["gold"][0], abs=1e-6), name
  for coef in KL_COEFS:
    # On the same samples and the same member normalisation, the worst case of the
    # members is below member 0 alone and below the uncertainty-weighted mean (λ 0.1).
    wco, single, uwo = (runs[f"{o}/{coef}"]["score"][0] for o in ("wco", "single", "uwo"))
    assert wco <= single + 1e-6 and wco <= uwo + 1e-6, (wco, single, uwo)
  for objective in OBJECTIVES:
    # The penalty −β·log(π/π_ref) is zero on iteration 1's samples, so the first update,
    # and iteration 2, are the same for both coefficients; after that β changes the run.
    off, on = runs[f"{objective}/0"], runs[f"{objective}/0.2"]
    np.testing.assert_allclose(on["kl_half_squared"][:2], off["kl_half_squared"][:2],
                               rtol=1e-5, atol=1e-7)
    assert abs(on["kl_half_squared"][2] - off["kl_half_squared"][2]) > 1e-6, objective
  proxy = result["proxies"]["0"]
  assert len(proxy["norm_mu"]) == len(proxy["norm_sigma"]) == 2  # one per member
  assert min(proxy["norm_sigma"]) > 0

  for name in ("gold_vs_kl.png", "gold_vs_iteration.png"):
    png = (workdir / name).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
