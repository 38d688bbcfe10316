"""End to end: experiments/lsc.py at a tiny size writes well-formed outputs."""

import csv
import json

import pytest

ARMS = ("raw", "lsc", "sum", "and")
ITERATIONS = 2


@pytest.mark.slow
def test_tiny_run_writes_tables_json_and_plots(tmp_path, run_experiment, all_finite):
  workdir = tmp_path / "run"
  flags = {"workdir": workdir, "seeds": "(0,)", "task.num_train_pairs": 64,
           "task.num_eval_pairs": 16, "rm.train.steps": 4, "rm.train.batch_size": 8,
           "rm.optim.warmup_steps": 1, "rm.model.d_model": 16, "rm.model.d_ff": 32,
           "ppo.ppo.iterations": ITERATIONS, "ppo.ppo.prompts": 2,
           "ppo.reward.lsc_samples": 4, "final_window": 1, "base_samples": 64}
  proc = run_experiment("lsc", flags, timeout=900)
  assert "(a) gold gain" in proc.stdout and "worse property" in proc.stdout

  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["arm"] for r in rows] == [*ARMS, "lsc-raw", "and-sum"]
  assert (workdir / "results.md").read_text().count("\n") == 2 + len(rows)
  with open(workdir / "curves.csv") as f:
    curves = list(csv.DictReader(f))
  assert {r["arm"] for r in curves} == set(ARMS)
  assert {r["iteration"] for r in curves} == {str(i + 1) for i in range(ITERATIONS)}

  result = json.loads((workdir / "results.json").read_text())
  assert all_finite(result)
  assert set(result["base_policy"]) == {"total", "helpful+length", "harmless"}
  assert set(result["rm_eval"]["0"]) == {"total", "helpful+length", "harmless"}
  for arm in ARMS:
    entry = result["arms"][arm]
    assert len(entry["curves_per_seed"]["gold"][0]) == ITERATIONS
    assert entry["proxy_gain"]["mean"] == pytest.approx(entry["per_seed"]["proxy_gain"][0])
    # The worse property's gain is the smaller of the two standardised gains.
    assert entry["per_seed"]["min_std_gain"][0] == pytest.approx(
        min(entry["per_seed"]["std_gain_0"][0], entry["per_seed"]["std_gain_1"][0]))
  assert "proxy_1" in result["arms"]["and"]["curves_per_seed"]
  # Iteration 1 samples the base policy with the same key in every arm of a comparison.
  assert (result["arms"]["raw"]["curves_per_seed"]["gold"][0][0]
          == pytest.approx(result["arms"]["lsc"]["curves_per_seed"]["gold"][0][0]))
  diff = result["differences"]["and-sum"]["min_std_gain"]["mean"]
  assert diff == pytest.approx(result["arms"]["and"]["min_std_gain"]["mean"]
                               - result["arms"]["sum"]["min_std_gain"]["mean"], abs=1e-9)

  for name in ("a_raw_vs_lsc.png", "b_sum_vs_and.png"):
    png = (workdir / name).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
