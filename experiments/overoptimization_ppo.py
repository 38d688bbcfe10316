"""Reward-model overoptimisation under PPO, and what conservative ensembles and KL change.

  python experiments/overoptimization_ppo.py --config=experiments/configs/overoptimization_ppo.py

The PPO half of Coste et al. (2023) (algorithms.md §3, §5) on the synthetic gold task,
whose gold reward is known exactly:

1. For every seed, a K-member proxy ensemble is trained on the task's train split with
   label noise (the best-of-n experiment's ``train_proxies``).
2. For every (objective, KL coefficient), ``ppo_trainer.train`` optimises the base policy
   against that objective of the members, each normalised by the trainer to zero mean,
   unit std on base-policy samples (``reward.member_norm``, the library's one path): "single" is member 0 alone,
   "wco" the minimum, "uwo" the mean minus λ·variance. Each iteration logs the proxy
   score, the gold reward and the KL E[Σ_t ½ (log π/π_ref)²] ("kl_half_squared").
3. Over seeds: mean and 95% t-interval of the gold and proxy curves per iteration, the
   final and peak gold, the final KL. Writes results.md/.csv, curves.csv, results.json
   (per-seed curves), gold_vs_kl.png and gold_vs_iteration.png into the workdir and
   prints the verdicts.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli, report  # noqa: E402
from experiments.overoptimization_bon import interval, train_proxies  # noqa: E402
from rmjax.configs import ppo as ppo_configs  # noqa: E402
from rmjax.rl import build as rl_build  # noqa: E402
from rmjax.rl import trainer as ppo_trainer  # noqa: E402
from rmjax.tasks import preference as synthetic

LABELS = {"single": "single RM (member 0)", "wco": "WCO", "uwo": "UWO", "mean": "mean"}
LOGGED = ("gold", "score", "kl_half_squared", "kl", "response_length")  # kept per iteration


def merge(base, overrides) -> None:
  """Writes the leaves of the nested ``overrides`` into ``base`` in place."""
  for name, value in overrides.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      merge(base[name], value)
    else:
      base[name] = value


def ppo_config(c, objective: str, kl_coef: float, seed: int, workdir: str,
               proxy_dir: str) -> ml_collections.ConfigDict:
  """The ``rmjax ppo`` config of one run: ppo.py's defaults, ``c.ppo`` over them."""
  p = ppo_configs.get_config()
  merge(p, c.ppo)
  p.seed = seed
  episodes = p.ppo.prompts * p.ppo.samples_per_prompt  # the trainer samples in rollouts
  p.reward.update(workdirs=(proxy_dir,), objective=objective, uwo_lam=c.uwo_lam,
                  member_norm=True,
                  norm_batches=max(1, -(-c.norm.prompts * c.norm.samples // episodes)))
  p.kl.update(adaptive=False, coef=kl_coef)
  n = p.ppo.iterations
  p.train.update(workdir=workdir, log_every=max(1, n // 5), save_every=n, keep_checkpoints=1)
  return p


def read_curves(workdir: str) -> dict:
  """{metric: [iterations]} of a PPO run's metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = sorted((r for r in rows if r.get("split") == "train"), key=lambda r: r["step"])
  return {k: np.asarray([r[k] for r in rows], np.float64) for k in LOGGED}


def run_seed(c, seed: int) -> tuple[dict, dict]:
  """({objective: {kl_coef: curves}}, proxy info) of one seed."""
  start = time.time()
  raw, evals = train_proxies(c, c.label_noise, seed)
  proxy_dir = os.path.join(c.workdir, "proxies", f"noise{c.label_noise:g}_seed{seed}")
  task = synthetic.build_task(synthetic.SyntheticConfig(
      **c.task.to_dict(), label_noise=c.label_noise))
  critic = rl_build.first_member(raw)
  print(f"seed {seed}: proxies trained in {time.time() - start:.0f}s, eval "
        f"accuracy {evals['accuracy']:.3f}, gold agreement {evals['gold_agreement']:.3f}",
        flush=True)
  curves, stats = {}, None
  for objective in c.objectives:
    for coef in c.kl_coefs:
      start = time.time()
      workdir = os.path.join(c.workdir, "ppo", f"{objective}_kl{coef:g}_seed{seed}")
      shutil.rmtree(workdir, ignore_errors=True)  # never resume a run of another config
      config = ppo_config(c, objective, coef, seed, workdir, proxy_dir)
      result = ppo_trainer.train(config, scorers=[raw], task=task, critic_model=critic)
      stats = stats or result["member_stats"][0]  # the same samples in every run of a seed
      curve = curves.setdefault(objective, {})[f"{coef:g}"] = read_curves(workdir)
      print(f"seed {seed} {objective} kl {coef:g}: {time.time() - start:.0f}s, gold "
            f"{curve['gold'][0]:.3f} -> {curve['gold'][-1]:.3f}, proxy "
            f"{curve['score'][0]:.3f} -> {curve['score'][-1]:.3f}, KL "
            f"{curve['kl_half_squared'][-1]:.3f}", flush=True)
  return curves, {**evals, "norm_mu": stats["mu"], "norm_sigma": stats["sigma"]}


def summarise(c, per_seed: list[dict]) -> dict:
  """Mean and 95% t-interval over seeds of every curve and the derived figures."""
  out = {}
  for objective in c.objectives:
    for coef in c.kl_coefs:
      runs = [s[objective][f"{coef:g}"] for s in per_seed]
      stacked = {k: np.stack([r[k] for r in runs]) for k in LOGGED}  # [seeds, iterations]
      gold = stacked["gold"]
      entry = {f"{k}_per_seed": v for k, v in stacked.items()}
      entry.update({k: interval(v) for k, v in stacked.items()})
      entry.update(
          final_gold=interval(tail(gold)), peak_gold=interval(smoothed(gold).max(1)),
          gold_gain=interval(tail(gold) - gold[:, 0]),
          proxy_gain=interval(tail(stacked["score"]) - stacked["score"][:, 0]),
          final_kl=interval(tail(stacked["kl_half_squared"])),
          peak_minus_final=interval(smoothed(gold).max(1) - tail(gold)))
      out[f"{objective}/{coef:g}"] = entry
  return out


def tail(x, width: int = 5):
  """[seeds] mean of the last ``width`` iterations (one iteration's batch is small)."""
  return np.asarray(x)[:, -width:].mean(1)


def smoothed(x, width: int = 5):
  """[seeds, iterations - width + 1] running mean over ``width`` iterations."""
  x = np.asarray(x)
  width = min(width, x.shape[1])
  kernel = np.ones(width) / width
  return np.stack([np.convolve(row, kernel, mode="valid") for row in x])


def verdicts(c, summary) -> list[str]:
  """Plain sentences: does gold fall after its peak, and what gold gain each setting buys."""
  lines = ["Final = mean of the last 5 iterations; peak = highest 5-iteration running mean; "
           "gain = final - iteration 1; KL = E[sum_t 1/2 (log pi/pi_ref)^2]."]
  if len(c.seeds) < 2:
    lines.append("One seed: the [intervals] below are that seed's value, not a spread.")
  fmt = lambda e: f"{e['mean']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"
  for coef in c.kl_coefs:
    lines.append(f"-- KL coefficient {coef:g}:")
    for objective in c.objectives:
      e = summary[f"{objective}/{coef:g}"]
      drop = e["peak_minus_final"]
      state = ("gold falls from its peak (one seed, no interval)"
               if len(c.seeds) < 2 and drop["mean"] > 0.05 else
               "overoptimises: gold falls from its peak (95% interval above 0)"
               if drop["low"] > 0 else
               "gold falls from its peak in the mean, interval includes 0"
               if drop["mean"] > 0.05 else "no fall of gold from its peak")
      lines.append(f"  {LABELS[objective]}: gold gain {fmt(e['gold_gain'])}, proxy gain "
                   f"{fmt(e['proxy_gain'])}, final KL {fmt(e['final_kl'])}, peak - final "
                   f"gold {fmt(drop)}: {state}")
  best = max(summary, key=lambda k: summary[k]["gold_gain"]["mean"])
  lines.append(f"Largest gold gain: {best} ({fmt(summary[best]['gold_gain'])}).")
  return lines


def write_outputs(c, summary, proxies, seconds) -> list[str]:
  """results.md/.csv, curves.csv, results.json, gold_vs_kl.png, gold_vs_iteration.png."""
  fmt = lambda e: f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"
  rows, curve_rows = [], []
  for objective in c.objectives:
    for coef in c.kl_coefs:
      e = summary[f"{objective}/{coef:g}"]
      rows.append({"objective": objective, "kl_coef": coef, "final_gold": fmt(e["final_gold"]),
                   "peak_gold": fmt(e["peak_gold"]), "gold_gain": fmt(e["gold_gain"]),
                   "proxy_gain": fmt(e["proxy_gain"]), "final_kl": fmt(e["final_kl"])})
      for i in range(len(e["gold"]["mean"])):
        curve_rows.append({"objective": objective, "kl_coef": coef, "iteration": i + 1,
                           **{f"{k}_{b}": float(e[k][b][i]) for k in LOGGED
                              for b in ("mean", "low", "high")}})
  stem = lambda name: os.path.join(c.workdir, name)
  paths = report.write_table(stem("results"), [
      ("objective", "objective"), ("kl_coef", "KL coef"), ("final_gold", "final gold"),
      ("peak_gold", "peak gold"), ("gold_gain", "gold gain"), ("proxy_gain", "proxy gain"),
      ("final_kl", "final KL (½ log-ratio²)")], rows)
  paths += report.write_table(stem("curves"), [(k, k) for k in curve_rows[0]], curve_rows)[1:]
  paths.append(report.write_json(stem("results.json"), {
      "config": c.to_dict(), "seconds": seconds, "proxies": proxies, "runs": summary}))
  paths.append(plot(c, summary, stem("gold_vs_kl.png")))
  paths.append(plot(c, summary, stem("gold_vs_iteration.png"), x_key=None))
  return paths


def plot(c, summary, path: str, x_key: str | None = "kl_half_squared") -> str:
  """Gold (top row) and proxy objective (bottom row) against the seed-mean KL (or the
  iteration, ``x_key=None``), one column per KL coefficient, a line per objective with
  its 95% band over seeds. Every curve is a 5-iteration running mean: one iteration's
  batch is small and its KL jumps about."""
  grid = []
  for key, dashed in (("gold", False), ("score", True)):
    row = []
    for coef in c.kl_coefs:
      panel = []
      for objective in c.objectives:
        e = summary[f"{objective}/{coef:g}"]
        x = (smoothed([e[x_key]["mean"]])[0] if x_key else
             smoothed([np.arange(1, len(e[key]["mean"]) + 1)])[0])
        y = (smoothed([e[key][b]])[0] for b in ("mean", "low", "high"))
        panel.append(report.Series(LABELS[objective], x, *y, dashed=dashed))
      row.append(panel)
    grid.append(row)
  xlabel = ("KL = E[Σ_t ½ (log π/π_ref)²] (seed mean)" if x_key else "PPO iteration")
  return report.plot_bands(path, grid, [f"KL coefficient {coef:g}" for coef in c.kl_coefs],
                           xlabel, ["gold reward", "proxy objective (normalised members)"],
                           sharex="col" if x_key else True)


def run(c) -> dict:
  """The whole experiment; returns the summary (also written to the workdir)."""
  start = time.time()
  os.makedirs(c.workdir, exist_ok=True)
  per_seed, proxies = [], {}
  for seed in c.seeds:
    curves, proxies[str(seed)] = run_seed(c, seed)
    per_seed.append(curves)
  summary = summarise(c, per_seed)
  seconds = time.time() - start
  report.announce(write_outputs(c, summary, proxies, seconds), verdicts(c, summary), seconds)
  return summary


if __name__ == "__main__":
  cli.main(run)
