"""experiments/secrets_rm.py: the configs it builds, its pure helpers, and a tiny end-to-end
run whose controls must hold and whose strength figures must be those of the task's real
swaps."""

import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments import secrets_rm, stats  # noqa: E402
from experiments.configs import secrets_rm as secrets_rm_config  # noqa: E402
from rmjax.data import schema  # noqa: E402
from rmjax.rm import strength  # noqa: E402
from rmjax.tasks import preference as synthetic  # noqa: E402

# One-block reward models on nearly deterministic labels (bt_scale 4); steps are cheap
# here, compilations are not, so few runs of many steps.
TINY = {"seeds": "0,", "noise_rates": "0.0,0.3", "methods": "('bt','flip')",
        "task.num_train_pairs": 1024, "task.num_eval_pairs": 256, "task.bt_scale": 4.0,
        "rm.train.steps": 300, "rm.model.d_model": 16, "rm.model.d_ff": 32,
        "rm.model.n_layers": 1, "rm.optim.learning_rate": 3e-3, "rm.optim.warmup_steps": 10,
        "strength.members": 2, "metarm.num_samples": 8, "metarm.k": 2,
        "metarm.train_prompts": 8, "metarm.test_prompts": 32, "metarm.prompts_per_step": 4,
        "metarm.chunk_size": 64, "bootstrap.resamples": 200}
VOCABULARY = (stats.REPRODUCED, stats.PARTLY, stats.NOT_REPRODUCED, stats.NOT_TESTABLE)


def test_every_method_trains_with_the_dropout_of_the_contrastive_views():
  """The BT baseline's model has the dropout SimCSE's views use (no confound), and so does
  every other method's, as the model train-rm would build from each config."""
  c = secrets_rm_config.get_config()
  assert c.dropout > 0
  rates = {m: secrets_rm.model_dropout(secrets_rm.rm_config(
      c, "w", 0, 0.1, secrets_rm.method_flags(c, m, "s.npz"))) for m in secrets_rm.METHODS}
  assert rates["bt"] == rates["simcse"] == rates["swav"] == pytest.approx(c.dropout)
  assert set(rates.values()) == {rates["bt"]}
  t = secrets_rm.rm_config(c, "w", 0, 0.1, secrets_rm.method_flags(c, "simcse", "s.npz"))
  assert t.loss.contrastive.dropout == t.model.dropout_rate
  assert t.data.synthetic.label_noise == 0.1 and t.data.synthetic.version == 2


def test_detection_at_rate_against_a_hand_count():
  """Six pairs, two swapped (ids 1, 4); the lowest third by μ is ids 1 and 2: one of the
  two selected is swapped (precision 1/2) and one of the two swapped is found (recall 1/2)."""
  mu = np.array([0.5, -1.0, -0.5, 2.0, 0.1, 1.0])
  flipped = np.array([False, True, False, False, True, False])
  found = secrets_rm.detection_at_rate(mu, flipped, 1 / 3)
  assert found["precision_items"].tolist() == [1.0, 0.0]
  assert sorted(found["recall_items"].tolist()) == [0.0, 1.0]
  # AUROC of −μ: the swapped score 1.0 and −0.1, the others −0.5, 0.5, −2, −1: 4 + 3 of 8.
  assert found["auroc"] == pytest.approx(7 / 8)
  assert secrets_rm.detection_at_rate(mu, np.zeros(6, bool), 0.0) is None


def test_noise_slope_is_the_least_squares_slope():
  rates = np.array([0.0, 0.1, 0.2, 0.4])
  diffs = np.random.default_rng(0).normal(size=(4, 5))
  expected = [np.polyfit(rates, diffs[:, i], 1)[0] for i in range(5)]
  np.testing.assert_allclose(secrets_rm.noise_slope(diffs, rates), expected, rtol=1e-10)
  with pytest.raises(ValueError, match="diffs, rates"):
    secrets_rm.noise_slope(diffs[:1], rates[:1])


def test_growth_without_a_gain_at_any_rate_is_only_partly_reproduced():
  """A slope that rises only because a method loses less to BT on noisier data is not the
  claimed growing gain: beats_bt_at lists only rates where the gain is above 0 and survives
  Holm, and the growth verdict is "partly" without one."""
  reject, keep = {"reject": True, "p_adjusted": 0.01}, {"reject": False, "p_adjusted": 0.3}
  d = lambda low, high, holm: {"mean": (low + high) / 2, "low": low, "high": high, "holm": holm}
  vs_bt = {"0": {"simcse": d(-0.2, -0.1, reject), "flip": d(-0.1, -0.05, reject)},
           "0.3": {"simcse": d(-0.03, 0.04, keep), "flip": d(0.01, 0.05, reject)},
           "0.4": {"simcse": d(0.01, 0.04, keep), "flip": d(-0.01, 0.04, keep)}}
  assert secrets_rm.beats_bt_at(vs_bt, "simcse") == []
  assert secrets_rm.beats_bt_at(vs_bt, "flip") == ["0.3"]
  pre = [{"name": f"strength_ensemble_above_chance@{k}", "ok": True} for k in vs_bt]
  summary = {"controls": [], "strength": {},
             "precondition": [*pre, {"name": "noise_hurts_bt", "ok": True}],
             "robustness": {"vs_bt": vs_bt,
                            "slope": {m: d(0.1, 0.5, reject) for m in ("simcse", "flip")}}}
  c = secrets_rm_config.get_config()
  c.noise_rates = (0.0, 0.3, 0.4)
  found = secrets_rm.verdicts(c, summary)
  assert found["growth/simcse"]["verdict"] == stats.PARTLY
  assert found["growth/flip"]["verdict"] == stats.REPRODUCED
  assert found["growth/flip"]["evidence"].endswith("beats BT at 0.3")
  assert found["robustness/flip@0.3"]["verdict"] == stats.REPRODUCED


def test_checked_rejects_a_sweep_without_zero_and_applies_scale():
  c = secrets_rm_config.get_config()
  c.noise_rates = (0.1, 0.2)
  with pytest.raises(ValueError, match="noise_rates"):
    secrets_rm.checked(c)
  c = secrets_rm_config.get_config()
  c.scale = 2
  scaled = secrets_rm.checked(c)
  assert scaled.task.num_train_pairs == 2 * c.task.num_train_pairs
  assert scaled.rm.model.d_model == 2 * c.rm.model.d_model


@pytest.mark.slow
def test_tiny_run_controls_hold_and_strength_is_scored_against_the_real_swaps(
    tmp_path, run_experiment, all_finite):
  workdir = tmp_path / "run"
  proc = run_experiment("secrets_rm", {"workdir": workdir, **TINY}, timeout=600)
  assert proc.stdout.index("Preconditions:") < proc.stdout.index("Verdicts")
  result = json.loads((workdir / "results.json").read_text())
  assert all_finite(result)
  assert (workdir / "results.md").read_text().startswith("Preconditions:")

  controls = {k["name"]: k for k in result["controls"]}
  for name in ("bt_above_chance_at_zero_noise", "injected_swaps_lower_strength",
               "noise_swaps_exactly_the_rate", "per_pair_scoring_matches_trainer",
               "same_dropout_every_method"):
    assert controls[name]["ok"], controls[name]
  pre = {p["name"] for p in result["precondition"]}
  assert {"strength_ensemble_above_chance@0", "strength_ensemble_above_chance@0.3",
          "noise_hurts_bt", "policy_is_shifted"} <= pre

  # Paired differences against BT at each rate, Holm-corrected, and a verdict for each.
  rob = result["robustness"]
  for key in ("0", "0.3"):
    d = rob["vs_bt"][key]["flip"]
    assert d["low"] <= d["mean"] <= d["high"] and "p_adjusted" in d["holm"]
  assert set(result["verdicts"]) == {"robustness/flip@0", "robustness/flip@0.3", "growth/flip",
                                     "strength@0.3", "metarm/shifted"}
  assert all(v["verdict"] in VOCABULARY for v in result["verdicts"].values())

  # Strength at the true rate, recomputed from the run's strength file and the task's own
  # swapped mask: the JSON holds exactly that recall, above random selection (0.3).
  s = result["strength"]["0.3"]["out_of_fold"]
  task = {k: v for k, v in result["config"]["task"].items()}
  flipped = synthetic.make_split(synthetic.SyntheticConfig(**task, label_noise=0.3),
                                 "train")[schema.FLIPPED]
  mu = strength.load(workdir / "seed0" / "noise0.3" / "strength_out_of_fold.npz").mu
  lowest = np.argsort(mu, kind="stable")[:flipped.sum()]
  assert s["recall"]["mean"] == pytest.approx(flipped[lowest].mean())
  assert 0.3 < s["recall"]["mean"] <= 1.0
  assert result["strength"]["0"]["swapped"] == [0] and "recall" not in result["strength"][
      "0"]["out_of_fold"]

  # Per-pair correctness is what the summaries are built from; the shifted policy is
  # ranked best first by the proxy (its top two score above the base policy's mean).
  per_pair = np.load(workdir / "per_pair.npz")
  bt0 = per_pair["seed0/noise0/bt"]
  assert bt0.shape == (256,) and rob["gold_agreement"]["bt"]["0"]["mean"] == bt0.mean()
  m = result["metarm"]
  assert m["shift"]["proxy_shift"]["mean"] > 0
  assert 0 < m["shifted_pairs"][0] <= 32
  assert (workdir / "gold_vs_noise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
