"""experiments/overoptimization_ppo.py and ppo_analysis.py: the matched-KL helpers against
hand values, and a tiny end-to-end run whose controls hold, whose objectives order as
their definitions require on shared first samples, whose KL penalty acts once the policy
has left the reference, and whose claims all get verdicts."""

import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from experiments import overoptimization_ppo, ppo_analysis, stats  # noqa: E402
from experiments.configs import overoptimization_ppo as config  # noqa: E402
from rmjax.runtime.metrics import read_metrics  # noqa: E402

ITERATIONS = 30  # PPO on gold at 32 episodes per iteration needs about this many to gain
TINY = {"seeds": "0,", "task.num_train_pairs": 128, "task.num_eval_pairs": 32, "proxy.k": 2,
        "proxy.model.d_model": 16, "proxy.model.d_ff": 32, "proxy.train.steps": 8,
        "proxy.train.batch_size": 8, "proxy.optim.warmup_steps": 2,
        "proxy.pretrain.sequences": 128, "proxy.pretrain.steps": 4,
        "base.prompts": 8, "base.samples": 8, "norm.prompts": 8, "norm.samples": 4,
        "objectives": "('single','wco','uwo')", "penalised": "('uwo',)",
        "ppo.rl.iterations": ITERATIONS, "ppo.rl.prompts": 8,
        "ppo.rl.samples_per_prompt": 4, "bootstrap.resamples": 200,
        # The default's 10 warmup steps would spend a third of this short run below the full
        # rate, and the gold control then cannot show its gain within it.
        "ppo.optim.actor.warmup_steps": 0}


def test_running_mean_window_and_reach_by_hand():
  np.testing.assert_allclose(ppo_analysis.running_mean([1, 2, 3, 4, 5], 3),
                             [1.5, 2, 3, 4, 4.5])
  with pytest.raises(ValueError, match="smooth=2"):
    ppo_analysis.running_mean([1, 2], 2)
  gold, kl = [10, 11, 12, 13, 14, 15], [0, 1, 2, 3, 4, 5]
  # smoothed KL (0.5, 1, 2, 3, 4, 4.5) first reaches 2.5 at iteration 3: gold 12, 13, 14.
  np.testing.assert_array_equal(ppo_analysis.window_at(gold, kl, 2.5, 3), [12, 13, 14])
  # At the end of the run the window shifts inside it.
  np.testing.assert_array_equal(ppo_analysis.window_at(gold, kl, 4.5, 3), [13, 14, 15])
  assert ppo_analysis.reach(kl, 3) == 4.5
  with pytest.raises(ValueError, match="beyond the trajectory's reach 4.5"):
    ppo_analysis.window_at(gold, kl, 4.6, 3)


def test_methods_names_penalised_runs_and_refuses_bad_lists():
  c = config.get_config()
  c.objectives, c.penalised, c.kl_coefs = ("single", "wco"), ("wco",), (0.01, 0.1)
  assert overoptimization_ppo.methods(c) == {
      "single": ("single", 0.0), "wco": ("wco", 0.0), "wco+kl0.01": ("wco", 0.01),
      "wco+kl0.1": ("wco", 0.1)}
  c.objectives = ("wco",)
  with pytest.raises(ValueError, match="must include 'single'"):
    overoptimization_ppo.methods(c)
  c.objectives = ("single", "median")
  with pytest.raises(ValueError, match="'median'"):
    overoptimization_ppo.methods(c)


def test_ppo_config_sets_objective_penalty_and_normalisation_batches():
  c = config.get_config()
  p = overoptimization_ppo.ppo_config(c, "uwo", 0.01, 2.5, 7, "/tmp/x")
  episodes = c.ppo.rl.prompts * c.ppo.rl.samples_per_prompt
  assert (p.reward.objective, p.reward.uwo_lam, p.kl.coef, p.kl.adaptive, p.seed) == (
      "uwo", 2.5, 0.01, False, 7)
  assert p.reward.norm_batches == -(-c.norm.prompts * c.norm.samples // episodes)
  assert p.rl.iterations == c.ppo.rl.iterations and p.train.workdir == "/tmp/x"


def _curve(workdir, name: str, key: str) -> np.ndarray:
  rows = [r for r in read_metrics(str(workdir / "ppo" / f"{name}_seed0" / "metrics.jsonl"))
          if r.get("split") == "train"]
  return np.asarray([r[key] for r in sorted(rows, key=lambda r: r["step"])])


@pytest.mark.slow
def test_tiny_run_controls_objectives_penalty_and_verdicts(tmp_path, run_experiment,
                                                            all_finite):
  workdir = tmp_path / "run"
  proc = run_experiment("overoptimization_ppo", {"workdir": workdir, **TINY}, timeout=600)
  assert proc.stdout.index("Preconditions:") < proc.stdout.index("Verdicts")
  result = json.loads((workdir / "results.json").read_text())
  assert all_finite(result)
  assert (workdir / "results.md").read_text().startswith("Preconditions:")
  assert (workdir / "gold_vs_kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  controls = {k["name"]: k for k in result["controls"]}
  assert controls["first_iteration_samples_the_reference"]["ok"]
  assert controls["gold_ppo_raises_gold"]["ok"], controls["gold_ppo_raises_gold"]["detail"]
  assert set(result["vs_single"]) == {"wco", "uwo", "uwo+kl0.01"}
  assert set(result["verdicts"]) == {"gao", "coste/wco", "coste/uwo", "coste_kl/uwo+kl0.01"}
  vocabulary = {stats.REPRODUCED, stats.PARTLY, stats.NOT_REPRODUCED, stats.NOT_TESTABLE}
  members_ok = all(p["ok"] for p in result["precondition"])
  for key, v in result["verdicts"].items():
    assert v["verdict"] in vocabulary, (key, v)
    if key != "gao" and not members_ok:
      assert v["verdict"] == stats.NOT_TESTABLE, (key, v)
  for m, d in result["vs_single"].items():
    assert 0 < d["kl"] <= result["reach"]["single"] + 1e-9, m
    assert d["low"] <= d["mean"] <= d["high"], m
  assert result["uwo_lam"][0] > 0

  # Every run of a seed samples its first rollout from the same reference policy, so on
  # those samples the worst case of the normalised members is at most member 0 alone.
  single, wco = (_curve(workdir, m, "score")[0] for m in ("single", "wco"))
  assert wco <= single + 1e-6, (wco, single)
  np.testing.assert_allclose(_curve(workdir, "uwo", "gold")[0],
                             _curve(workdir, "single", "gold")[0], rtol=1e-6)
  # The penalty -beta*log(pi/pi_ref) is zero on iteration 1's samples, so iteration 2 is
  # the same with and without it; from iteration 3 on beta changes the run.
  off, on = (_curve(workdir, m, "kl") for m in ("uwo", "uwo+kl0.01"))
  np.testing.assert_allclose(on[:2], off[:2], rtol=1e-5, atol=1e-7)
  assert abs(on[2] - off[2]) > 1e-6, (on[:3], off[:3])
