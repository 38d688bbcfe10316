"""End to end: experiments/overoptimization_bon.py at a small size: best-of-n by the proxy raises
the proxy score with n, the conservative objectives stay below the mean, and a proxy
that tracks the gold reward buys gold at small n."""

import csv
import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOISE = ("0.0", "0.25")
OBJECTIVES = ("single", "mean", "wco", "uwo")
MAX_N = 128


@pytest.mark.slow
def test_small_run_selects_by_the_proxy_and_gains_gold(tmp_path, run_experiment, all_finite):
  workdir = tmp_path / "run"
  # 2 x 256 rows: one 512-row chunk, the shape the task's own sampler already compiled.
  # One-block proxies trained long enough on enough pairs to track the gold reward (steps
  # are cheap here, compilations are not).
  flags = {"workdir": workdir, "seeds": "(0,)", "bon.num_prompts": 2, "bon.num_samples": 256,
           "bon.max_n": MAX_N, "task.num_train_pairs": 1024, "task.num_eval_pairs": 128,
           "proxy.ensemble.k": 2, "proxy.train.steps": 200, "proxy.train.batch_size": 16,
           "proxy.optim.learning_rate": 2e-3, "proxy.optim.warmup_steps": 10,
           "proxy.model.d_model": 16, "proxy.model.d_ff": 32, "proxy.model.n_layers": 1}
  proc = run_experiment("overoptimization_bon", flags, timeout=600)
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
  ns = np.asarray(result["n"])
  assert ns.tolist() == [2 ** i for i in range(8)]
  np.testing.assert_allclose(result["kl"], np.log(ns) - (ns - 1) / ns, rtol=1e-6, atol=1e-9)
  for noise in ("0", "0.25"):
    block = result["noise"][noise]
    assert set(OBJECTIVES) | {"single/0", "single/1"} <= set(block)
    proxy = {name: np.asarray(block[name]["proxy"]["mean"]) for name in OBJECTIVES}
    for name in OBJECTIVES:
      # Best-of-n picks by the proxy, so the proxy score of the pick grows with n.
      assert (np.diff(proxy[name]) >= -1e-6).all() and proxy[name][-1] > proxy[name][0] + 1.0, (
          noise, name, proxy[name])
      # n = 1 is one uniformly drawn sample whatever the objective: the same gold.
      assert block[name]["gold"]["mean"][0] == pytest.approx(block["mean"]["gold"]["mean"][0])
    # The conservative objectives never exceed the mean of the (normalised) members.
    assert (proxy["wco"] <= proxy["mean"] + 1e-6).all() and (
        proxy["uwo"] <= proxy["mean"] + 1e-6).all(), noise
  # A clean-label proxy that tracks the gold reward buys gold at small n.
  (evals,) = result["proxy_eval"].values()
  assert evals["0.0"]["gold_agreement"] >= 0.6, evals
  gain = np.asarray(result["noise"]["0"]["single"]["gold_gain"]["mean"])
  assert gain[1] > 0 and gain[2] > 0, gain

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
