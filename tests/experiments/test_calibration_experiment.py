"""experiments/calibration.py: the verdicts from hand-made records, and a tiny end-to-end run
whose outputs hold every policy's calibration, the preconditions and the verdicts."""

import json
import pathlib
import sys

import ml_collections
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from experiments import calibration, stats  # noqa: E402


def _record(ece, over, gold):
  return {"ece": ece, "overconfidence": over, "accuracy": 0.5, "confidence": 0.5 + over,
          "gold": gold, "kl": 1.0}


def test_interval_needs_two_seeds_and_every_value():
  assert calibration.interval([1.0]) is None and calibration.interval([1.0, None]) is None
  out = calibration.interval([1.0, 3.0])
  assert out["mean"] == 2.0 and out["low"] < 1.0 and out["high"] > 3.0


def test_summarise_reads_the_claims_off_paired_seeds():
  before = _record(0.3, 0.0, 0.0)
  after = {"ppo": [_record(0.40, 0.30, 1.0), _record(0.42, 0.32, 1.1), _record(0.41, 0.31, 1.2)],
           "ppo_m": [_record(0.20, 0.10, 1.0), _record(0.21, 0.12, 1.0),
                     _record(0.22, 0.09, 1.1)],
           "ppo_c": [_record(0.41, 0.30, 0.9), _record(0.39, 0.33, 1.2),
                     _record(0.43, 0.30, 1.1)]}
  preference = {"standard": {"correct": 0.5, "incorrect": 0.5},
                "calibrated": {"correct": 0.5, "incorrect": -0.1}}
  seconds = {m: [1.0] * 3 for m in after}
  out = calibration.summarise(ml_collections.ConfigDict(), before, after, preference, seconds)
  v = {k: r["verdict"] for k, r in out["verdicts"].items()}
  assert v == {"ppo_overconfident": stats.REPRODUCED, "ppo_m_lowers_ece": stats.REPRODUCED,
               "ppo_c_lowers_ece": stats.NOT_REPRODUCED}
  assert out["minus_ppo"]["ppo_m"]["ece"]["mean"] == pytest.approx(-0.2)
  # a reward model that does not pay for confidence leaves the claims untestable
  preference["standard"] = {"correct": -0.1, "incorrect": 0.2}
  out = calibration.summarise(ml_collections.ConfigDict(), before, after, preference, seconds)
  assert out["verdicts"]["ppo_c_lowers_ece"]["verdict"] == stats.NOT_TESTABLE


@pytest.mark.slow
def test_tiny_run_reads_every_policys_calibration(tmp_path, run_experiment):
  workdir = tmp_path / "run"
  run_experiment("calibration", {"workdir": workdir, "seeds": "(0,)", "proxy.steps": 30,
                                 "rl.rl.iterations": 3, "rl.rl.prompts": 4,
                                 "rl.optim.actor.warmup_steps": 0, "eval_samples": 64},
                 timeout=600)
  result = json.loads((workdir / "results.json").read_text())
  assert set(result["after"]) == {"ppo", "ppo_m", "ppo_c"}
  for record in [result["before"], *(r for runs in result["after"].values() for r in runs)]:
    assert 0.0 <= record["ece"] <= 1.0 and 0.0 <= record["confidence"] <= 1.0
  assert result["before"]["kl"] == pytest.approx(0.0, abs=1e-4)
  assert set(result["preference"]) == {"standard", "calibrated"}
  assert all(v["verdict"] in (stats.NOT_TESTABLE, stats.harness_message(result["controls"]))
             for v in result["verdicts"].values())  # one seed: no interval
  assert (workdir / "results.md").read_text().startswith("Preconditions:")
