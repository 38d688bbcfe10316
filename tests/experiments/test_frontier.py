"""experiments/frontier.py: gold at matched KL by hand, and a tiny end-to-end run whose
outputs hold every method's trajectory, the controls and verdicts in the vocabulary."""

import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from experiments import frontier, stats  # noqa: E402

TINY = {"seeds": "(0, 1)", "methods": "('bon_distill', 'ppo', 'rloo', 'dpo')",
        "kls": "(0.001, 0.01)", "proxy.steps": 30, "rl.rl.iterations": 4, "rl.rl.prompts": 4,
        "rl.optim.actor.warmup_steps": 0, "dpo.train.steps": 6, "dpo.train.eval_every": 3,
        "dpo.train.eval_prompts": 16, "sft.train.steps": 6, "sft.train.eval_every": 3,
        "sft.train.eval_prompts": 16, "sft.data.best_of_n.prompts": 32,
        "sft.data.best_of_n.n": 4}


def test_gold_at_interpolates_at_the_first_crossing():
  curve = {"kl": np.array([0.0, 0.5, 1.5, 1.0, 3.0]), "gold": np.array([1.0, 2.0, 4.0, 0.0,
                                                                        9.0])}
  assert frontier.gold_at(curve, 0.0) == 1.0
  assert frontier.gold_at(curve, 1.0) == pytest.approx(3.0)  # halfway from 0.5 to 1.5
  assert frontier.gold_at(curve, 2.0) == pytest.approx(0.0 + 9.0 * 0.5)  # from 1.0 to 3.0
  assert frontier.gold_at(curve, 3.5) is None


def test_interval_needs_two_seeds_and_every_value():
  assert frontier.interval([1.0]) is None and frontier.interval([1.0, None]) is None
  out = frontier.interval([1.0, 3.0])
  assert out["mean"] == 2.0 and out["low"] < 1.0 and out["high"] > 3.0


@pytest.mark.slow
def test_tiny_run_writes_every_method_controls_and_verdicts(tmp_path, run_experiment):
  workdir = tmp_path / "run"
  run_experiment("frontier", {"workdir": workdir, **TINY}, timeout=600)
  result = json.loads((workdir / "results.json").read_text())
  assert set(result["curves"]) == {"bon_distill", "ppo", "rloo", "dpo"}
  for method, runs in result["curves"].items():
    assert len(runs) == 2, method
    for run in runs:
      assert run["kl"][0] == 0.0 and len(run["kl"]) == len(run["gold"]) >= 3, method
      assert np.all(np.isfinite(run["gold"])), method
  assert {c["name"] for c in result["controls"]} == {
      f"{m} on the gold reward raises gold" for m in ("bon_distill", "ppo", "rloo")}
  vocabulary = {stats.REPRODUCED, stats.PARTLY, stats.NOT_REPRODUCED, stats.NOT_TESTABLE}
  broken = stats.harness_message(result["controls"])  # 4 iterations may not raise gold
  for v in result["verdicts"].values():
    assert v["verdict"] == broken if broken else v["verdict"] in vocabulary
  assert (workdir / "results.md").read_text().startswith("Preconditions:")
  assert (workdir / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
