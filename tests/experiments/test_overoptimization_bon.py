"""experiments/overoptimization_bon.py at a tiny size, and its pure analysis helpers.

The end-to-end run checks what would break if the harness broke: its controls hold (gold
ranked by gold is monotone, a pure-length reward overoptimises), the preconditions are
computed from the task's measured turns, every objective ranks by its proxy, and every
claim gets a verdict from the vocabulary.
"""

import json
import pathlib
import sys

import ml_collections
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments import bon_analysis, stats  # noqa: E402

TINY = {"seeds": "0,1", "task.num_train_pairs": 256, "task.num_eval_pairs": 64,
        "proxy.k": 2, "proxy.train.steps": 30, "proxy.pretrain.sequences": 256,
        "proxy.pretrain.steps": 10, "bon.num_prompts": 4, "bon.num_samples": 128,
        "bon.max_n": 64, "uwo_scales": "1.0,", "bootstrap.resamples": 200}
OBJECTIVES = {"single", "mean", "wco", "uwo@1"}
ENSEMBLES = {f"{kind}/{noise}" for kind in ("pretrain", "finetune") for noise in ("0", "0.25")}


@pytest.mark.slow
def test_tiny_run_controls_preconditions_and_verdicts(tmp_path, run_experiment, all_finite):
  workdir = tmp_path / "run"
  proc = run_experiment("overoptimization_bon", {"workdir": workdir, **TINY}, timeout=600)
  assert proc.stdout.index("Preconditions:") < proc.stdout.index("Verdicts")
  result = json.loads((workdir / "results.json").read_text())
  assert all_finite(result)
  assert (workdir / "results.md").read_text().startswith("Preconditions:")
  assert (workdir / "gold_vs_kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  controls = {k["name"]: k for k in result["controls"]}
  assert controls["gold_best_of_n_is_monotone"]["ok"]
  assert controls["pure_length_reward_is_hackable"]["ok"]  # the turn is inside the base data
  pre = {p["name"]: p for p in result["precondition"]}
  for feature in ("length", "markers"):
    assert pre[f"gold_turns_in_training_data/{feature}"]["ok"]
  assert {f"members_disagree_where_wrong/{e}" for e in ENSEMBLES} <= set(pre)

  ns = np.asarray(result["n"])
  assert ns.tolist() == [2 ** i for i in range(7)]
  assert set(result["ensembles"]) == ENSEMBLES
  for block in result["ensembles"].values():
    assert set(block["objectives"]) == OBJECTIVES
    assert set(block["vs_single"]) == OBJECTIVES - {"single"}
    for obj in OBJECTIVES:
      e = block["objectives"][obj]
      first = e["gain"][0]  # n = 1 is the base policy itself: no gain, no spread
      assert (first["mean"], first["low"], first["high"]) == (0.0, 0.0, 0.0)
      assert e["final_gain"]["low"] <= e["final_gain"]["mean"] <= e["final_gain"]["high"]
  assert set(result["pretrain_vs_finetune"]) == {"0", "0.25"}
  vocabulary = {stats.REPRODUCED, stats.PARTLY, stats.NOT_REPRODUCED, stats.NOT_TESTABLE}
  assert result["verdicts"] and all(v["verdict"] in vocabulary
                                    for v in result["verdicts"].values())
  # A failed ensemble precondition makes that ensemble's Coste claims untestable.
  for name in ENSEMBLES:
    if not pre[f"members_disagree_where_wrong/{name}"]["ok"]:
      assert result["verdicts"][f"coste/{name}/wco"]["verdict"] == stats.NOT_TESTABLE
  assert result["cost"]["rm_evaluations"]["wco"] == 2 * result["cost"]["rm_evaluations"][
      "single"]


def _config():
  return ml_collections.ConfigDict({"bootstrap": {"resamples": 300, "seed": 0},
                                    "noise_levels": (0.0,), "kinds": ("pretrain",)})


def test_curve_summary_finds_the_peak_and_the_gao_fit():
  """Gold gains that follow d(α − βd) exactly give back α, β; the drop from the peak is
  the peak's gold minus the last."""
  kl = np.log(2.0 ** np.arange(6)) - (2.0 ** np.arange(6) - 1) / 2.0 ** np.arange(6)
  d = np.sqrt(kl)
  gain = d * (2.0 - 1.5 * d)  # peaks inside the grid
  gold = np.broadcast_to(1.0 + gain, (3, 4, 6)).copy()
  out = bon_analysis.curve_summary(_config(), gold, kl)
  assert out["alpha"]["mean"] == pytest.approx(2.0) and out["beta"]["mean"] == pytest.approx(1.5)
  assert out["peak_index"] == int(np.argmax(gain))
  assert out["drop_from_peak"]["mean"] == pytest.approx(gain.max() - gain[-1])
  assert out["final_gain"]["mean"] == pytest.approx(gain[-1])


def test_preconditions_fail_when_the_turn_is_beyond_the_data():
  rng = np.random.default_rng(0)
  length = rng.integers(1, 20, 2000)
  gold = np.minimum(length, 10) - 0.5 * np.maximum(length - 10, 0) ** 2
  turns = {"length": {"argmax": 10, "percentile": 0.5}}
  ok = bon_analysis.preconditions(_config(), turns, {"length": length, "gold": gold}, {})
  assert ok[0]["ok"]
  short = length[length <= 10]  # training data that never passes the turn
  bad = bon_analysis.preconditions(_config(), turns, {"length": short, "gold": gold[length <= 10]},
                                   {"pretrain/0": np.full((3, 4), -0.2)})
  assert not bad[0]["ok"] and not bad[1]["ok"]
