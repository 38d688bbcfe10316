"""experiments/lsc.py: its pure helpers against hand values, and a tiny end-to-end run whose
control holds, whose JSON carries every record finite, and whose verdicts follow from the
preconditions and intervals."""

import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from experiments import lsc, stats  # noqa: E402

ARMS = ("raw", "lsc", "sum", "and")
ITERATIONS, PROMPTS, SPP, LSC_SAMPLES = 2, 8, 4, 4


def test_agreement_drops_gold_ties_and_halves_reward_ties():
  r_c = np.array([1.0, 0.0, 2.0, 5.0, 3.0])
  r_r = np.array([0.0, 1.0, 2.0, 1.0, 1.0])
  g_c = np.array([2.0, 2.0, 1.0, 4.0, 0.0])
  g_r = np.array([1.0, 1.0, 0.0, 4.0, 1.0])
  # pair 3 is a gold tie (dropped); the rest: agree, disagree, reward tie, disagree.
  np.testing.assert_array_equal(lsc.agreement(r_c, r_r, g_c, g_r), [1.0, 0.0, 0.5, 0.0])
  with pytest.raises(ValueError, match="r_chosen"):
    lsc.agreement(r_c, r_r, g_c[:3], g_r[:3])


def test_min_of_means_on_resampled_indices():
  index = lsc.item_index(2, 3)
  np.testing.assert_array_equal(index, [[0, 1, 2], [3, 4, 5]])
  columns = np.array([[1.0, 2.0, 3.0, 10.0, 10.0, 10.0],
                      [0.0, 4.0, 8.0, 20.0, 0.0, 1.0]])
  stat = lsc.min_of_means(columns)
  # seed 0: means (2, 4) -> 2; seed 1: (10, 7) -> 7; items (0, 0, 2): (5/3, 8/3) -> 5/3.
  np.testing.assert_allclose(stat(index), [2.0, 7.0])
  np.testing.assert_allclose(stat(np.array([[0.0, 0.0, 2.0]])), [5 / 3])
  diff = lsc.difference_of(stat, lsc.min_of_means(columns + 1.0))
  np.testing.assert_allclose(diff(index), [-1.0, -1.0])
  # Through the shared bootstrap: the point estimate is the seeds' mean of their minima.
  assert stats.hierarchical_bootstrap(index, statistic=stat, num_resamples=50)["mean"] == 4.5


def test_counts_and_per_prompt_means():
  assert lsc.ppo_rm_evaluations(30, 8, 4, 8, 1, "none") == 960
  assert lsc.ppo_rm_evaluations(30, 8, 4, 8, 2, "lsc") == 30 * 8 * 12 * 2
  np.testing.assert_allclose(lsc.per_prompt([1, 3, 2, 2, 0, 6], 2), [2, 2, 3])
  with pytest.raises(ValueError, match="values"):
    lsc.per_prompt([1, 2, 3], 2)


def test_decide_orders_harness_precondition_holm():
  above = {"mean": 1.0, "low": 0.5, "high": 1.5}
  reject, keep = {"p_adjusted": 0.01, "reject": True}, {"p_adjusted": 0.08, "reject": False}
  assert lsc.decide(above, 1, True, reject, None)["verdict"] == stats.REPRODUCED
  assert lsc.decide(above, -1, True, reject, None)["verdict"] == stats.NOT_REPRODUCED
  assert lsc.decide(above, 1, True, keep, None)["verdict"] == stats.NOT_REPRODUCED
  assert lsc.decide(above, 1, False, reject, None)["verdict"] == stats.NOT_TESTABLE
  broken = lsc.decide(above, 1, True, reject, "harness broken: x")
  assert broken["verdict"] == "harness broken: x"


def test_scale_multiplies_sizes_only():
  from experiments.configs import lsc as config
  c = config.get_config()
  c.scale = 3
  s = lsc.apply_scale(c)
  assert (s.eval.prompts, s.rm.model.d_model, s.ppo.rl.prompts) == (
      3 * c.eval.prompts, 3 * c.rm.model.d_model, 3 * c.ppo.rl.prompts)
  assert s.ppo.rl.iterations == c.ppo.rl.iterations and s.seeds == c.seeds
  c.scale = 0
  with pytest.raises(ValueError, match="scale"):
    lsc.apply_scale(c)


@pytest.mark.slow
def test_tiny_run_control_holds_and_records_are_complete(tmp_path, run_experiment,
                                                         all_finite):
  workdir = tmp_path / "run"
  # Tiny reward models (no better than chance: the precondition must fail), two PPO
  # iterations per arm; the gold control runs 30 iterations of 32 episodes at the default
  # step, enough to show that the harness works.
  flags = {"workdir": workdir, "seeds": "(0,)", "task.num_train_pairs": 64,
           "task.num_eval_pairs": 32, "rm.train.steps": 4, "rm.train.batch_size": 8,
           "rm.optim.warmup_steps": 1, "rm.model.d_model": 16, "rm.model.d_ff": 32,
           "rm.model.n_layers": 1, "ppo.rl.iterations": ITERATIONS,
           "ppo.rl.prompts": PROMPTS, "ppo.reward.lsc_samples": LSC_SAMPLES,
           "control_iterations": 30,
           # Warmup starts from a zero rate, so the arms' one update would not move them.
           "ppo.optim.actor.warmup_steps": 0,
           "control_seeds": 1, "final_window": 1, "base_samples": 64, "eval.prompts": 16,
           "num_resamples": 200}
  proc = run_experiment("lsc", flags, timeout=900)
  out = proc.stdout
  assert out.index("Preconditions:") < out.index("Controls:") < out.index("Verdicts")
  assert (workdir / "results.md").read_text().startswith("Preconditions:")

  result = json.loads((workdir / "results.json").read_text())
  assert all_finite(result)
  for key in ("precondition", "controls", "verdicts", "cost", "methods", "differences",
              "holm"):
    assert key in result, key
  (control,) = result["controls"]
  assert control["name"] == lsc.CONTROL and control["ok"], control
  assert control["value"]["low"] > 0
  # Four-step reward models are near chance: every precondition fails, so both claims are
  # not testable (the control held, so no "harness broken").
  assert [p["ok"] for p in result["precondition"]] == [False, False, False]
  assert {v["verdict"] for v in result["verdicts"].values()} == {stats.NOT_TESTABLE}
  assert set(result["holm"]) == set(lsc.CLAIMS)

  methods, diffs = result["methods"], result["differences"]
  for arm in ARMS:
    for key in ("gold_gain", "std_gain_0", "std_gain_1", "min_std_gain", "proxy_gain_0",
                "length", "markers", "kl"):
      entry = methods[arm][key]
      assert entry["low"] <= entry["mean"] <= entry["high"], (arm, key, entry)
    assert methods[arm]["gold_gain"]["num_items"] == 16
  # The base policy's samples are shared, so the paired difference of gains is the
  # difference of the methods' gains; the worse property's likewise (one seed).
  for claim, (new, old, _, _) in lsc.CLAIMS.items():
    for key in ("gold_gain", "min_std_gain"):
      assert diffs[claim][key]["mean"] == pytest.approx(
          methods[new][key]["mean"] - methods[old][key]["mean"], abs=1e-9)
  for arm in ARMS:
    m = np.array(result["items"][arm]["std_gain_0"]), np.array(result["items"][arm]["std_gain_1"])
    assert methods[arm]["min_std_gain"]["mean"] == pytest.approx(
        min(m[0].mean(), m[1].mean()))

  cost = result["cost"]
  rms = {"raw": 1, "lsc": 1, "sum": 2, "and": 2}
  for arm in ARMS:
    extra = LSC_SAMPLES if arm in ("lsc", "and") else 0
    assert cost[arm]["rm_evaluations"] == ITERATIONS * PROMPTS * (SPP + extra) * rms[arm]
    assert cost[arm]["ppo_seconds"] > 0 and cost[arm]["eval_seconds"] > 0
  assert cost["shared"]["control_seconds"] > 0

  # Iteration 1 draws the same samples in every arm (same seed, same reference policy), so
  # gold agrees there; the arms differ only in the reward, which changes the update.
  curves = {arm: {k: np.asarray(v[0]) for k, v in result["curves_per_seed"][arm].items()}
            for arm in ARMS}
  for arm in ARMS:
    assert curves[arm]["gold"][0] == pytest.approx(curves["raw"]["gold"][0], abs=1e-6)
    assert abs(curves[arm]["kl"][0]) < 1e-4 and curves[arm]["kl"][1] > 1e-4, arm
  for new, old in (("lsc", "raw"), ("and", "sum")):
    assert abs(curves[new]["kl"][1] - curves[old]["kl"][1]) > 1e-6, (new, old)
  for name in ("a_raw_vs_lsc.png", "b_sum_vs_and.png"):
    assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
