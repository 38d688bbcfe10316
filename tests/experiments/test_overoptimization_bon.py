"""End to end: experiments/overoptimization_bon.py at a tiny size writes well-formed outputs."""

import csv
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOISE = ("0.0", "0.25")
OBJECTIVES = ("single", "mean", "wco", "uwo")
MAX_N = 128


@pytest.mark.slow
def test_tiny_run_writes_table_json_and_plot(tmp_path, run_experiment, all_finite):
  workdir = tmp_path / "run"
  # 2 x 256 rows: one 512-row chunk, the shape the task's own sampler already compiled.
  flags = {"workdir": workdir, "seeds": "(0,)", "bon.num_prompts": 2, "bon.num_samples": 256,
           "bon.max_n": MAX_N, "task.num_train_pairs": 64, "task.num_eval_pairs": 16,
           "proxy.ensemble.k": 2, "proxy.train.steps": 8, "proxy.train.batch_size": 8,
           "proxy.optim.warmup_steps": 2, "proxy.model.d_model": 16, "proxy.model.d_ff": 32}
  proc = run_experiment("overoptimization_bon", flags, timeout=300)
  assert "label noise 25%" in proc.stdout and "vs single" in proc.stdout

  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted((r["noise"], r["objective"]) for r in rows) == sorted(
      (n, o) for n in NOISE for o in OBJECTIVES)
  markdown = (workdir / "results.md").read_text().splitlines()
  assert len(markdown) == 2 + len(NOISE) * len(OBJECTIVES)
  with open(workdir / "curves.csv") as f:
    curves = list(csv.DictReader(f))
  assert len(curves) == len(NOISE) * len(OBJECTIVES) * 8  # n = 1, 2, ..., 128

  result = json.loads((workdir / "results.json").read_text())
  assert all_finite(result)
  assert result["n"] == [2 ** i for i in range(8)]
  for noise in ("0", "0.25"):
    block = result["noise"][noise]
    assert set(OBJECTIVES) | {"single/0", "single/1"} <= set(block)
    for name in OBJECTIVES:
      entry = block[name]
      assert len(entry["gold"]["mean"]) == len(result["n"])
      assert entry["gold_gain"]["mean"][0] == pytest.approx(0.0, abs=1e-6)
      assert entry["peak_n"] in result["n"]
    # "single" is the average of the members' own curves.
    members = [block[f"single/{m}"]["gold"]["mean"] for m in range(2)]
    assert block["single"]["gold"]["mean"] == pytest.approx(
        [(a + b) / 2 for a, b in zip(*members)], rel=1e-5, abs=1e-5)

  png = (workdir / "gold_vs_kl.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_t_interval_matches_hand_computation():
  sys.path.insert(0, str(ROOT))
  from experiments import stats  # pylint: disable=import-outside-toplevel
  mean, low, high = stats.t_interval([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
  # 3 seeds: sem = 1/sqrt(3), t(0.975, df=2) = 4.302653
  assert mean.tolist() == [2.0, 0.0]
  assert high[0] - mean[0] == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)
  assert low[1] == high[1] == 0.0
  one = stats.t_interval([[5.0]])
  assert [float(x[0]) for x in one] == [5.0, 5.0, 5.0]
