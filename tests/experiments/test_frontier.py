"""experiments/frontier.py: gold at matched KL by hand, and a tiny end-to-end run whose
outputs hold every method's trajectory, the controls and verdicts in the vocabulary."""

import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from experiments import frontier, stats  # noqa: E402
from rmjax.runtime.metrics import read_metrics  # noqa: E402

TINY = {"seeds": "(0, 1)", "methods": "('bon_distill', 'ppo', 'rloo', 'dpo')",
        "kls": "(0.001, 0.01)", "proxy.steps": 30, "rl.rl.iterations": 4, "rl.rl.prompts": 4,
        "rl.optim.actor.warmup_steps": 0, "dpo.train.steps": 6, "dpo.train.eval_every": 3,
        "dpo.train.eval_prompts": 16, "sft.train.steps": 6, "sft.train.eval_every": 3,
        "sft.train.eval_prompts": 16, "sft.data.best_of_n.prompts": 32,
        "sft.data.best_of_n.n": 4}


def test_crossings_interpolate_at_the_first_crossing():
  kl, gold = np.array([0.0, 0.5, 1.5, 1.0, 3.0]), np.array([1.0, 2.0, 4.0, 0.0, 9.0])
  got = frontier.crossings(kl, gold, (0.0, 1.0, 2.0, 3.5))
  np.testing.assert_allclose(got[:3], [1.0, 3.0, 4.5])  # halfway 0.5->1.5; 1.0->3.0
  assert np.isnan(got[3])  # never reached
  batch = frontier.crossings(np.stack([kl, kl * 2]), np.stack([gold, gold]), (1.0,))
  np.testing.assert_allclose(batch[:, 0], [3.0, 2.0])  # second curve: 0.5 at KL 1.0


def test_rl_curves_put_the_base_policy_first_and_smooth_the_rest():
  means = np.array([[[0.2, 1.0, 7.0], [0.4, 2.0, 7.0], [0.6, 6.0, 7.0]]])  # kl, gold, length
  kl, gold = frontier.curve(means, "ppo", 3)
  np.testing.assert_allclose(kl[0], [0.0, 0.3, 0.4, 0.5])
  np.testing.assert_allclose(gold[0], [1.5, 1.5, 3.0, 4.0])
  kl, gold = frontier.curve(means[..., :2], "dpo", 3)  # evaluations: as they are
  np.testing.assert_allclose(kl[0], [0.2, 0.4, 0.6])


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
  # The per-prompt records behind every interval: 4 prompts per RL iteration, 16 per eval.
  ppo = frontier.per_prompt(str(workdir / "ppo" / "seed0"), "train", ("kl", "gold"))
  assert ppo.shape == (4, 4, 2)
  np.testing.assert_allclose(ppo.mean(axis=1)[:, 1], [
      r["gold"] for r in read_metrics(str(workdir / "ppo" / "seed0" / "metrics.jsonl"))
      if r["split"] == "train"], rtol=1e-6)
  assert frontier.per_prompt(str(workdir / "dpo" / "seed1"), "eval", ("gold",)).shape == (
      2, 16, 1)
  for per_kl in result["gold_at_kl"].values():
    for v in per_kl.values():
      assert v is None or (v["low"] <= v["high"] and v["num_seeds"] == 2)
  assert {c["name"] for c in result["controls"]} == {
      f"{m} on the gold reward raises gold" for m in ("bon_distill", "ppo", "rloo")}
  vocabulary = {stats.REPRODUCED, stats.PARTLY, stats.NOT_REPRODUCED, stats.NOT_TESTABLE}
  broken = stats.harness_message(result["controls"])  # 4 iterations may not raise gold
  for v in result["verdicts"].values():
    assert v["verdict"] == broken if broken else v["verdict"] in vocabulary
  assert (workdir / "results.md").read_text().startswith("Preconditions:")
  assert (workdir / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
