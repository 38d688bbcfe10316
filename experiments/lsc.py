"""Transforming and combining rewards in PPO (Wang et al. 2024, algorithms.md §4).

  python experiments/lsc.py --config=experiments/configs/lsc.py

On the synthetic gold task (rmjax/tasks/preference.py), for every seed:

1. Reward models are trained with ``rm_trainer.train`` on pairs labelled by the gold total
   (for (a)) and by each property of ``config.properties`` (for (b)); every labelling uses
   the same task, so the policy, prompts and gold reward are shared.
2. Four PPO runs (``ppo_trainer.train``), identical except for the reward:
   (a) "raw": the total-labelled model's score; "lsc": log σ(r − r_ref(x)), r_ref the
       per-prompt 0.85 quantile of the scores of reference-policy samples;
   (b) "sum": the two property models' scores added; "and": Σ_j log σ(r_j − r_j^ref(x)).
3. From each run's metrics.jsonl: gold (total and per term), the raw proxy score of each
   reward model and the KL per iteration; the figures at the end are the mean of the last
   ``final_window`` iterations. Gold gains are measured from the base policy (a large
   base-policy sample), and for (b) standardised by each property's base-policy spread.
4. Over seeds: mean and 95% t-interval of every figure and of the per-seed difference
   between the two arms. Writes results.md/.csv, curves.csv, results.json and two PNGs
   (a_raw_vs_lsc.png, b_sum_vs_and.png) into the workdir and prints the verdicts.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli, report, stats  # noqa: E402
from rmjax.configs import ppo as ppo_defaults  # noqa: E402
from rmjax.configs import train_rm  # noqa: E402
from rmjax.rl import trainer as ppo_trainer
from rmjax.rm import trainer as rm_trainer
from rmjax.runtime.metrics import read_metrics  # noqa: E402
from rmjax.tasks import preference as synthetic

# arm -> (comparison, labellings of its reward models, reward.transform)
ARMS = {"raw": ("a", "total", "none"), "lsc": ("a", "total", "lsc"),
        "sum": ("b", "properties", "none"), "and": ("b", "properties", "lsc")}
LABELS = {"raw": "raw reward", "lsc": "LSC log σ(r − r_ref)", "sum": "raw sum",
          "and": "AND Σ log σ(r_j − r_j,ref)"}


def override(dst, src) -> None:
  """Recursively set ``src``'s fields on the ConfigDict ``dst``."""
  for name, value in src.items():
    if isinstance(value, ml_collections.ConfigDict):
      override(dst[name], value)
    else:
      dst[name] = value


def rm_config(c, label_by: str, seed: int, workdir: str) -> ml_collections.ConfigDict:
  """``train-rm``'s defaults under ``c.rm``, on the task labelled by ``label_by``."""
  t = train_rm.get_config()
  override(t, c.rm)
  t.data.synthetic = ml_collections.ConfigDict({**c.task.to_dict(), "label_by": label_by})
  t.seed = seed
  steps = t.train.steps
  t.train.update(workdir=workdir, eval_every=steps, save_every=steps,
                 log_every=max(1, steps // 4))
  return t


def ppo_config(c, rm_dirs, transform: str, seed: int, workdir: str):
  """``rmjax ppo``'s defaults under ``c.ppo`` with the given reward models and transform."""
  p = ppo_defaults.get_config()
  override(p, c.ppo)
  p.reward.update(workdirs=tuple(rm_dirs), transform=transform)
  p.seed = seed
  iterations = p.ppo.iterations
  p.train.update(workdir=workdir, log_every=max(1, iterations // 4), save_every=iterations)
  return p


def fresh(workdir: str) -> str:
  """An empty ``workdir``: never resume a run of another config."""
  shutil.rmtree(workdir, ignore_errors=True)
  return workdir


def property_values(rows, terms) -> np.ndarray:
  """Per-iteration gold of a property (the sum of its gold terms) [iterations]."""
  if terms == "total":
    return np.array([r["gold"] for r in rows])
  return np.array([sum(r[f"gold_{t}"] for t in terms.split("+")) for r in rows])


def base_statistics(c, task) -> dict:
  """{property: (mean, std)} of each property (and the total) on base-policy samples."""
  keys = jax.random.split(jax.random.fold_in(jax.random.key(c.task.seed), 2000))
  prompts, plen = task.sample_prompts(keys[0], c.base_samples)
  tokens, mask = task.sample_responses(keys[1], prompts, plen)
  gold = task.score(tokens, mask, plen)
  out = {}
  for prop in ("total", *c.properties):
    terms = synthetic.TERMS if prop == "total" else prop.split("+")
    value = gold["total"] if prop == "total" else sum(gold[t] for t in terms)
    out[prop] = (float(np.mean(value)), float(np.std(value)))
  return out


def run_seed(c, seed: int) -> tuple[dict, dict]:
  """({arm: per-iteration curves}, {labelling: RM eval metrics}) of one seed."""
  rm_dirs, evals = {}, {}
  for label_by in ("total", *c.properties):
    start = time.time()
    workdir = fresh(os.path.join(c.workdir, "rms", f"{label_by}_seed{seed}"))
    evals[label_by] = rm_trainer.train(rm_config(c, label_by, seed, workdir))["eval"]
    rm_dirs[label_by] = workdir
    print(f"seed {seed}: RM labelled by {label_by} trained in {time.time() - start:.0f}s, "
          f"eval accuracy {evals[label_by]['accuracy']:.3f}", flush=True)
  curves = {}
  for arm, (_, labelling, transform) in ARMS.items():
    start = time.time()
    dirs = [rm_dirs["total"]] if labelling == "total" else [rm_dirs[p] for p in c.properties]
    workdir = fresh(os.path.join(c.workdir, "ppo", f"{arm}_seed{seed}"))
    ppo_trainer.train(ppo_config(c, dirs, transform, seed, workdir))
    rows = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
            if r.get("split") == "train"]
    curve = {"kl": np.array([r["kl"] for r in rows]),
             "length": np.array([r["response_length"] for r in rows]),
             "gold": property_values(rows, "total")}
    for prop in c.properties:
      curve[prop] = property_values(rows, prop)
    for j in range(len(dirs)):
      curve[f"proxy_{j}"] = np.array([r[f"proxy_{j}"] for r in rows])
    curves[arm] = curve
    print(f"seed {seed}: PPO {arm} in {time.time() - start:.0f}s: gold "
          f"{curve['gold'][0]:.2f} -> {curve['gold'][-1]:.2f}, KL {curve['kl'][-1]:.2f}",
          flush=True)
  return curves, evals


def interval(values) -> dict:
  """{"mean", "low", "high"} of the 95% t-interval over seeds (axis 0)."""
  mean, low, high = stats.t_interval(values)
  return {"mean": mean, "low": low, "high": high}


def smooth(x: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average along the last axis (shorter windows at the start)."""
  cums = np.cumsum(x, axis=-1)
  out = cums.copy()
  out[..., window:] = cums[..., window:] - cums[..., :-window]
  return out / np.minimum(np.arange(1, x.shape[-1] + 1), window)


def arm_figures(c, curves, base) -> dict:
  """Per-seed end-of-run figures of one arm; curves[k] is [seeds, iterations]."""
  w = c.final_window
  final = lambda x: x[:, -w:].mean(1)
  gold = smooth(curves["gold"], w)
  out = {"gold_gain": final(curves["gold"]) - base["total"][0],
         "kl": final(curves["kl"]), "length": final(curves["length"]),
         "proxy_gain": final(curves["proxy_0"]) - curves["proxy_0"][:, 0],
         "gold_drop_from_peak": gold.max(1) - gold[:, -1]}
  gains = []
  for i, prop in enumerate(c.properties):
    mean, std = base[prop]
    gains.append((final(curves[prop]) - mean) / std)
    out[f"std_gain_{i}"] = gains[-1]
  out["min_std_gain"] = np.min(gains, axis=0)
  return out


def summarise(c, per_seed: list[dict], base) -> dict:
  """Per arm: stacked per-seed curves and figures with intervals; per comparison the
  per-seed differences (lsc − raw, and − sum)."""
  out = {"arms": {}, "differences": {}}
  for arm in ARMS:
    curves = {k: np.stack([s[arm][k] for s in per_seed]) for k in per_seed[0][arm]}
    figures = arm_figures(c, curves, base)
    out["arms"][arm] = {"per_seed": figures, "curves_per_seed": curves,
                        **{k: interval(v) for k, v in figures.items()}}
  for new, old in (("lsc", "raw"), ("and", "sum")):
    a, b = out["arms"][new]["per_seed"], out["arms"][old]["per_seed"]
    out["differences"][f"{new}-{old}"] = {k: interval(a[k] - b[k]) for k in a}
  return out


def fmt(x: dict) -> str:
  return f"{x['mean']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]"


def verdicts(c, summary) -> list[str]:
  """Plain sentences on the two claims, from the per-seed differences."""
  d_a, d_b = summary["differences"]["lsc-raw"], summary["differences"]["and-sum"]
  arms = summary["arms"]
  lines = []
  if len(c.seeds) < 2:
    lines.append("One seed: the [intervals] below are that seed's value, not a spread.")
  sig = lambda x: ("one seed: no interval" if len(c.seeds) < 2 else "above 0"
                   if x["low"] > 0 else "below 0" if x["high"] < 0 else "includes 0")
  lines.append(
      f"(a) gold gain: raw {fmt(arms['raw']['gold_gain'])}, LSC {fmt(arms['lsc']['gold_gain'])};"
      f" LSC − raw {fmt(d_a['gold_gain'])} (interval {sig(d_a['gold_gain'])}).")
  lines.append(
      f"(a) KL: raw {fmt(arms['raw']['kl'])}, LSC {fmt(arms['lsc']['kl'])}; proxy gain raw "
      f"{fmt(arms['raw']['proxy_gain'])}, LSC {fmt(arms['lsc']['proxy_gain'])}; gold drop from "
      f"its peak raw {fmt(arms['raw']['gold_drop_from_peak'])}, LSC "
      f"{fmt(arms['lsc']['gold_drop_from_peak'])}.")
  names = list(c.properties)
  for i, prop in enumerate(names):
    lines.append(f"(b) {prop} standardised gain: sum {fmt(arms['sum'][f'std_gain_{i}'])}, "
                 f"AND {fmt(arms['and'][f'std_gain_{i}'])}; AND − sum "
                 f"{fmt(d_b[f'std_gain_{i}'])} (interval {sig(d_b[f'std_gain_{i}'])}).")
  lines.append(f"(b) worse property's standardised gain: sum {fmt(arms['sum']['min_std_gain'])}, "
               f"AND {fmt(arms['and']['min_std_gain'])}; AND − sum {fmt(d_b['min_std_gain'])} "
               f"(interval {sig(d_b['min_std_gain'])}). Paper: AND raises the worse property.")
  return lines


TABLE = [("comparison", "comparison"), ("arm", "reward"), ("gold_gain", "gold gain"),
         ("proxy_gain", "proxy gain (RM 0)"), ("kl", "KL"), ("length", "response length"),
         ("gold_drop_from_peak", "gold drop from peak"), ("std_gain_0", "std gain P0"),
         ("std_gain_1", "std gain P1"), ("min_std_gain", "min std gain")]


def write_outputs(c, summary, base, evals, seconds) -> list[str]:
  """results.md/.csv, curves.csv, results.json and the two PNGs."""
  rows, curve_rows = [], []
  for arm, (comparison, _, _) in ARMS.items():
    e = summary["arms"][arm]
    rows.append({"comparison": comparison, "arm": arm,
                 **{k: fmt(e[k]) for k, _ in TABLE[2:]}})
  for name, d in summary["differences"].items():
    rows.append({"comparison": "a" if name == "lsc-raw" else "b", "arm": name,
                 **{k: fmt(d[k]) for k, _ in TABLE[2:]}})
  for arm, e in summary["arms"].items():
    for key, per_seed in e["curves_per_seed"].items():
      band = interval(per_seed)
      for i in range(per_seed.shape[1]):
        curve_rows.append({"arm": arm, "metric": key, "iteration": i + 1,
                           **{b: float(band[b][i]) for b in ("mean", "low", "high")}})
  stem = lambda name: os.path.join(c.workdir, name)
  header = dict(TABLE) | {"std_gain_0": f"std gain {c.properties[0]}",
                          "std_gain_1": f"std gain {c.properties[1]}"}
  paths = report.write_table(stem("results"), list(header.items()), rows)
  paths += report.write_table(stem("curves"), [(k, k) for k in curve_rows[0]], curve_rows)[1:]
  paths.append(report.write_json(stem("results.json"), {
      "config": c.to_dict(), "seconds": seconds, "base_policy": base, "rm_eval": evals,
      **summary}))
  paths += plots(c, summary, base)
  return paths


def plots(c, summary, base) -> list[str]:
  """Smoothed curves against the arm's mean KL: (a) gold and proxy gains, (b) each
  property's standardised gain and their minimum."""
  w = c.final_window

  def series(arm, values):
    curves = summary["arms"][arm]["curves_per_seed"]
    kl = smooth(curves["kl"], w).mean(0)
    band = interval(smooth(values(curves), w))
    return report.Series(LABELS[arm], kl, band["mean"], band["low"], band["high"])

  gold = lambda cur: cur["gold"] - base["total"][0]
  proxy = lambda cur: cur["proxy_0"] - cur["proxy_0"][:, :1]
  std = lambda i: lambda cur: (cur[c.properties[i]] - base[c.properties[i]][0]) / base[
      c.properties[i]][1]
  minimum = lambda cur: np.minimum(std(0)(cur), std(1)(cur))
  xlabel = f"KL to the reference (nats, seed mean; {w}-iteration moving averages)"
  path_a = report.plot_bands(
      os.path.join(c.workdir, "a_raw_vs_lsc.png"),
      [[[series(arm, f) for arm in ("raw", "lsc")]] for f in (gold, proxy)],
      ["(a) one reward model (total labels)"], xlabel,
      ["gold gain over the base policy", "raw proxy gain over iteration 1"])
  path_b = report.plot_bands(
      os.path.join(c.workdir, "b_sum_vs_and.png"),
      [[[series(arm, f) for arm in ("sum", "and")]] for f in (std(0), std(1), minimum)],
      ["(b) reward models of " + " and ".join(c.properties)], xlabel,
      [f"{c.properties[0]} (std gain)", f"{c.properties[1]} (std gain)", "min of the two"])
  return [path_a, path_b]


def run(config) -> dict:
  """The whole experiment; returns the summary (also written to the workdir)."""
  start = time.time()
  c = ml_collections.ConfigDict(config.to_dict())
  if len(c.properties) != 2:
    raise ValueError(f"properties={c.properties} must name two properties")
  os.makedirs(c.workdir, exist_ok=True)
  task = synthetic.build_task(synthetic.SyntheticConfig(**c.task.to_dict()))
  base = base_statistics(c, task)
  per_seed, evals = [], {}
  for seed in c.seeds:
    curves, evals[str(seed)] = run_seed(c, seed)
    per_seed.append(curves)
  summary = summarise(c, per_seed, base)
  seconds = time.time() - start
  report.announce(write_outputs(c, summary, base, evals, seconds), verdicts(c, summary), seconds)
  return summary


if __name__ == "__main__":
  cli.main(run)
