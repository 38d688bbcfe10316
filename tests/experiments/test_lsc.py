"""End to end: experiments/lsc.py at a tiny size: every arm starts from the same samples,
PPO moves each policy, and the LSC / AND rewards change the update against raw / sum."""

import csv
import json

import numpy as np
import pytest

ARMS = ("raw", "lsc", "sum", "and")
ITERATIONS = 2


@pytest.mark.slow
def test_tiny_run_moves_every_arm_from_shared_samples(tmp_path, run_experiment, all_finite):
  workdir = tmp_path / "run"
  flags = {"workdir": workdir, "seeds": "(0,)", "task.num_train_pairs": 64,
           "task.num_eval_pairs": 16, "rm.train.steps": 4, "rm.train.batch_size": 8,
           "rm.optim.warmup_steps": 1, "rm.model.d_model": 16, "rm.model.d_ff": 32,
           "rm.model.n_layers": 1,
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
  arms = {arm: {k: np.asarray(v[0]) for k, v in result["arms"][arm]["curves_per_seed"].items()}
          for arm in ARMS}
  for arm, curve in arms.items():
    assert len(curve["gold"]) == ITERATIONS
    # Iteration 1 samples the reference policy itself (KL 0); PPO's update then moves it.
    assert abs(curve["kl"][0]) < 1e-4 and curve["kl"][1] > 1e-4, (arm, curve["kl"])
    entry = result["arms"][arm]
    # The worse property's gain is the smaller of the two standardised gains.
    assert entry["per_seed"]["min_std_gain"][0] == pytest.approx(
        min(entry["per_seed"]["std_gain_0"][0], entry["per_seed"]["std_gain_1"][0]))
  assert "proxy_1" in arms["and"] and "proxy_1" not in arms["raw"]
  # Iteration 1 draws the same samples in every arm (same seed, same reference policy), so
  # gold and each reward model's raw score agree there; the arms differ only in the reward
  # PPO optimises, and that difference changes the update: LSC's run is not raw's, nor
  # AND's the sum's, from iteration 2 on.
  for arm in ARMS:
    assert arms[arm]["gold"][0] == pytest.approx(arms["raw"]["gold"][0], abs=1e-6)
  assert arms["lsc"]["proxy_0"][0] == pytest.approx(arms["raw"]["proxy_0"][0], abs=1e-6)
  for j in (0, 1):
    assert arms["and"][f"proxy_{j}"][0] == pytest.approx(arms["sum"][f"proxy_{j}"][0], abs=1e-6)
  for new, old in (("lsc", "raw"), ("and", "sum")):
    assert abs(arms[new]["kl"][1] - arms[old]["kl"][1]) > 1e-6, (new, old)

  for name in ("a_raw_vs_lsc.png", "b_sum_vs_and.png"):
    png = (workdir / name).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
