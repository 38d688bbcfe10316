"""End to end: experiments/secrets_rm.py at a tiny size runs every method and writes its
tables, plot and JSON."""

import csv
import json

import pytest

METHODS = ("bt", "flip", "smoothing", "margin", "flip+margin", "soft+margin", "simcse", "swav",
           "goal")


@pytest.mark.slow
def test_tiny_run_writes_every_table(tmp_path, run_experiment, all_finite):
  workdir = tmp_path / "run"
  flags = {"workdir": workdir, "seeds": "(0,)", "task.num_train_pairs": 64,
           "task.num_eval_pairs": 32, "rm.train.steps": 4, "rm.train.batch_size": 8,
           "rm.optim.warmup_steps": 2, "rm.model.d_model": 16, "rm.model.d_ff": 32,
           "strength.members": 2, "metarm.num_samples": 4, "metarm.k": 2,
           "metarm.train_prompts": 8, "metarm.test_prompts": 16, "metarm.prompts_per_step": 4,
           "metarm.chunk_size": 64, "hh": False}
  run_experiment("secrets_rm", flags, timeout=900)

  with open(workdir / "methods.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["method"] for r in rows] == list(METHODS)
  with open(workdir / "strength.csv") as f:
    assert [r["scoring"] for r in csv.DictReader(f)] == ["out_of_fold", "in_sample"]
  results = json.loads((workdir / "results.json").read_text())
  assert all_finite(results)
  for seed in results["per_seed"]:
    assert 0.0 <= seed["out_of_fold/auroc"] <= 1.0
    assert 0.0 <= seed["metarm/shifted_accuracy"] <= 1.0
    assert seed["shifted_pairs"] == 16
    for method in METHODS:
      assert 0.0 <= seed[f"{method}/gold_agreement"] <= 1.0
  summary = results["summary"]["bt/gold_agreement"]
  assert summary["low"] <= summary["mean"] <= summary["high"]
  assert (workdir / "strength_vs_spread.png").stat().st_size > 0
  text = (workdir / "results.md").read_text()
  assert "## metarm" in text and "MetaRM" in text
