"""Reward-model overoptimisation under best-of-n, and what conservative ensembles change.

  python experiments/overoptimization_bon.py --config=experiments/configs/overoptimization_bon.py

The Gao et al. (2022) / Coste et al. (2023) protocol (algorithms.md §3) on the synthetic
gold task (rmjax/tasks/preference.py), whose gold reward is known exactly:

1. For every seed and label-noise level, a K-member proxy ensemble is trained on the
   task's train split in one program (``rm_trainer.train`` with ``ensemble.k``) and
   loaded as a [B, K] scorer.
2. For every seed, N base-policy responses per held-out prompt are sampled once and
   scored by the gold reward and by every member of every noise level's ensemble.
3. Best-of-n curves (the unbiased estimator, ``rl.bon``) of gold and proxy against
   KL_bon(n) for each objective: "single" is each member's own curve, averaged over the
   K members; "mean", "wco", "uwo" combine the per-member-normalised rewards.
4. Over seeds: mean and 95% t-interval of every curve, Gao's fit of the gold gain, the
   peak of gold and its drop by the largest n, and the gain of each objective over the
   single model. Writes results.md/.csv (summary), curves.csv, results.json and
   gold_vs_kl.png into the workdir and prints the verdicts.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import jax
import ml_collections
import numpy as np

# Run as a script, Python puts experiments/ itself on the path; the repo root makes the
# shared helpers importable as experiments.report and experiments.stats.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli, report, stats  # noqa: E402
from rmjax.configs import train_rm  # noqa: E402
from rmjax.objectives import bon
from rmjax.objectives import ensemble as objectives
from rmjax.rl import best_of_n, rewards
from rmjax.rm import load as load_rm
from rmjax.rm import trainer as rm_trainer
from rmjax.tasks import preference as synthetic

# Coste et al. 2023, best-of-n: relative gain of conservative objectives in final gold
# improvement over a single reward model (abstract: "up to 70%"; read off their figure).
PAPER_GAIN = {0.0: 30.0, 0.25: 75.0}
CURVES = ("gold", "proxy", "gold_gain", "proxy_gain")  # per-n intervals in curves.csv
LABELS = {"single": "single RM (member average)", "mean": "mean", "wco": "WCO",
          "uwo": "UWO"}


def apply_scale(config) -> ml_collections.ConfigDict:
  """A copy of ``config`` with its size fields multiplied by ``config.scale``."""
  c = ml_collections.ConfigDict(config.to_dict())
  s = int(c.scale)
  if s < 1:
    raise ValueError(f"scale={c.scale} must be an integer >= 1")
  for section, name in [("bon", "num_prompts"), ("bon", "num_samples"), ("bon", "max_n"),
                        ("task", "num_train_pairs")]:
    c[section][name] *= s
  for name in ("d_model", "d_ff", "n_heads", "n_kv_heads"):
    c.proxy.model[name] *= s
  return c


def proxy_config(c, noise: float, seed: int, workdir: str) -> ml_collections.ConfigDict:
  """The ``train-rm`` config of one proxy ensemble: train_rm's defaults under ``c.proxy``,
  on the task with ``noise`` label noise."""
  t = train_rm.get_config()
  for section, fields in c.proxy.items():
    for name, value in fields.items():
      t[section][name] = value
  t.data.synthetic = ml_collections.ConfigDict({**c.task.to_dict(), "label_noise": noise})
  t.seed = seed
  steps = t.train.steps
  t.train.update(workdir=workdir, eval_every=steps, save_every=steps, log_every=max(1, steps // 4))
  return t


def train_proxies(c, noise: float, seed: int):
  """(scorer [B, K], held-out eval metrics) of a freshly trained proxy ensemble."""
  workdir = os.path.join(c.workdir, "proxies", f"noise{noise:g}_seed{seed}")
  shutil.rmtree(workdir, ignore_errors=True)  # never resume a proxy of another config
  result = rm_trainer.train(proxy_config(c, noise, seed, workdir))
  scorer, _ = load_rm.load_ensemble(workdir)
  return scorer, result["eval"]


def n_grid(c) -> np.ndarray:
  """1, 2, 4, ..., max_n."""
  max_n, n = int(c.bon.max_n), int(c.bon.num_samples)
  if max_n & (max_n - 1) or not 1 <= max_n <= n:
    raise ValueError(f"bon.max_n={max_n} must be a power of 2 in [1, num_samples={n}]")
  return 2 ** np.arange(int(np.log2(max_n)) + 1)


def objective_curves(c, members, gold, ns) -> dict:
  """{objective: {"gold": [M], "proxy": [M]}} averaged over prompts, plus "single/m" for
  each member m. members [P, N, K], gold [P, N]. Members are normalised first by the
  library's path (``rl.rewards.member_stats`` on these base-policy samples, then
  ``normalize_members``), as PPO normalises them."""
  (members,) = rewards.normalize_members([members], rewards.member_stats([members]))
  out = {}
  for m in range(members.shape[-1]):
    out[f"single/{m}"] = bon.best_of_n_curves(members, gold, ns, "single", normalize=False,
                                              member=m)
  for objective in c.objectives:
    if objective != "single":
      kwargs = objectives.options(objective, uwo_lam=c.uwo_lam)
      out[objective] = bon.best_of_n_curves(members, gold, ns, objective, normalize=False,
                                            **kwargs)
  out = {name: {k: np.asarray(cur[k]).mean(0) for k in ("gold", "proxy")}
         for name, cur in out.items()}
  singles = [v for name, v in out.items() if name.startswith("single/")]
  out["single"] = {k: np.mean([v[k] for v in singles], 0) for k in ("gold", "proxy")}
  return out


def run_seed(c, task, prompts, prompt_mask, ns, seed: int) -> tuple[dict, dict]:
  """(curves[noise][objective], eval metrics[noise]) of one seed."""
  scorers, evals = {}, {}
  for noise in c.noise_levels:
    start = time.time()
    scorers[noise], evals[noise] = train_proxies(c, noise, seed)
    print(f"seed {seed} noise {noise:g}: proxies trained in {time.time() - start:.0f}s, "
          f"eval accuracy {evals[noise]['accuracy']:.3f}, gold agreement "
          f"{evals[noise]['gold_agreement']:.3f}", flush=True)

  def score(tokens, mask, prompt_len):  # each call below is jitted on its own
    out = {"gold": task.gold_reward(tokens, mask, prompt_len)["total"]}
    return out | {str(noise): scorer(tokens, mask) for noise, scorer in scorers.items()}

  start = time.time()
  scores = best_of_n.best_of_n_scores(
      jax.random.key(seed), task.policy, task.sampling, prompts, prompt_mask,
      c.bon.num_samples, score, chunk_size=c.bon.chunk_size)
  print(f"seed {seed}: {prompts.shape[0]} x {c.bon.num_samples} responses sampled and "
        f"scored in {time.time() - start:.0f}s", flush=True)
  curves = {noise: objective_curves(c, scores[str(noise)], scores["gold"], ns)
            for noise in c.noise_levels}
  return curves, evals


def summarise(c, per_seed: list[dict], ns) -> dict:
  """Mean and 95% t-interval over seeds of every curve, and the derived figures."""
  kl = np.asarray(bon.kl_bon(ns), np.float64)
  out = {"n": ns, "kl": kl, "noise": {}}
  for noise in c.noise_levels:
    names = list(per_seed[0][noise])
    stacked = {name: {k: np.stack([s[noise][name][k] for s in per_seed]) for k in
                      ("gold", "proxy")} for name in names}  # [seeds, M]
    gain_single = stacked["single"]["gold"][:, -1] - stacked["single"]["gold"][:, 0]
    block = {}
    for name, curve in stacked.items():
      gold, gain = curve["gold"], curve["gold"] - curve["gold"][:, :1]
      fits = np.array([bon.fit_gao_bon(kl, g) for g in gain])  # [seeds, 2]
      peak = int(np.argmax(gold.mean(0)))
      entry = {"gold_per_seed": gold, "proxy_per_seed": curve["proxy"],
               "gold": interval(gold), "proxy": interval(curve["proxy"]),
               "gold_gain": interval(gain),
               "proxy_gain": interval(curve["proxy"] - curve["proxy"][:, :1]),
               "gain_at_max_n": interval(gain[:, -1]), "peak_n": int(ns[peak]),
               "drop_from_peak": interval(gold[:, peak] - gold[:, -1]),
               "seeds_falling": int(np.sum(gold[:, peak] > gold[:, -1])),
               "alpha": interval(fits[:, 0]), "beta": interval(fits[:, 1]),
               "gain_minus_single": interval(gain[:, -1] - gain_single)}
      single_mean = gain_single.mean()
      entry["relative_gain_pct"] = (  # undefined unless the single model gained
          100 * (gain[:, -1].mean() - single_mean) / single_mean if single_mean > 0 else None)
      block[name] = entry
    out["noise"][f"{noise:g}"] = block
  return out


def interval(values) -> dict:
  """{"mean", "low", "high"} of the 95% t-interval over seeds (axis 0)."""
  mean, low, high = stats.t_interval(values)
  return {"mean": mean, "low": low, "high": high}


def verdicts(c, summary) -> list[str]:
  """Plain sentences: overoptimisation per objective, and gains against the paper."""
  ns = summary["n"]
  lines = ["Gain = gold(best-of-n at the largest n) - gold(base policy, n = 1); the relative "
           "gain of an objective is (its gain - the single model's) / the single model's, "
           "seed means (Coste et al. compare the improvement over the base policy)."]
  if len(c.seeds) < 2:
    lines.append("One seed: the [intervals] below are that seed's value, not a spread.")
  for noise in c.noise_levels:
    block = summary["noise"][f"{noise:g}"]
    lines.append(f"-- label noise {noise:.0%}:")
    for name in c.objectives:
      e, drop = block[name], block[name]["drop_from_peak"]
      significant = drop["low"] > 0
      if e["peak_n"] == ns[-1]:
        state = "no overoptimisation: gold is highest at the largest n"
      else:
        state = (f"gold peaks at n={e['peak_n']} and falls by {drop['mean']:.3f} "
                 f"[{drop['low']:.3f}, {drop['high']:.3f}] by n={ns[-1]}, in "
                 f"{e['seeds_falling']}/{len(c.seeds)} seeds: "
                 + ("overoptimises (one seed, no interval)" if len(c.seeds) < 2 else
                    "overoptimises (the fall's 95% interval is above 0)" if significant else
                    "the fall's 95% interval includes 0"))
      lines.append(f"  {LABELS[name]}: {state}")
    for name in c.objectives:
      if name == "single":
        continue
      e = block[name]
      rel = e["relative_gain_pct"]
      rel_text = f"{rel:+.0f}%" if rel is not None else "undefined (single model gained <= 0)"
      d = e["gain_minus_single"]
      lines.append(f"  {LABELS[name]} vs single at n={ns[-1]}: {rel_text} "
                   f"(gain {e['gain_at_max_n']['mean']:.3f} vs "
                   f"{block['single']['gain_at_max_n']['mean']:.3f}; difference "
                   f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}])"
                   + (f"; paper ~{PAPER_GAIN[noise]:+.0f}%" if noise in PAPER_GAIN else ""))
  return lines


def write_outputs(c, summary, evals, seconds) -> list[str]:
  """results.md/.csv (one row per noise x objective), curves.csv, results.json, PNG."""
  ns, kl = summary["n"], summary["kl"]
  rows, curve_rows = [], []
  for noise in c.noise_levels:
    block = summary["noise"][f"{noise:g}"]
    for name in c.objectives:
      e = block[name]
      fmt = lambda x: f"{x['mean']:.3f} [{x['low']:.3f}, {x['high']:.3f}]"
      rows.append({"noise": noise, "objective": name, "gain": fmt(e["gain_at_max_n"]),
                   "peak_n": e["peak_n"], "drop": fmt(e["drop_from_peak"]),
                   "alpha": fmt(e["alpha"]), "beta": fmt(e["beta"]),
                   "diff": None if name == "single" else fmt(e["gain_minus_single"]),
                   "rel": (None if name == "single" or e["relative_gain_pct"] is None
                           else f"{e['relative_gain_pct']:+.1f}%")})
      for i, n in enumerate(ns):
        curve_rows.append({"noise": noise, "objective": name, "n": int(n), "kl": float(kl[i]),
                           **{f"{k}_{b}": float(e[k][b][i]) for k in CURVES
                              for b in ("mean", "low", "high")}})
  stem = lambda name: os.path.join(c.workdir, name)
  paths = report.write_table(stem("results"), [
      ("noise", "label noise"), ("objective", "objective"),
      ("gain", f"gold gain at n={ns[-1]}"), ("peak_n", "peak n"),
      ("drop", "drop from peak"), ("alpha", "Gao α"), ("beta", "Gao β"),
      ("diff", "gain - single gain"), ("rel", "relative to single")], rows)
  keys = list(curve_rows[0])
  paths += report.write_table(stem("curves"), [(k, k) for k in keys], curve_rows)[1:]
  paths.append(report.write_json(stem("results.json"), {
      "config": c.to_dict(), "config_note": "sizes already multiplied by scale",
      "seconds": seconds, "proxy_eval": evals, **summary}))
  # Gains, not levels: every objective ranks the same samples of a seed, so the seed's
  # base-policy level gold(1) is shared and would only widen every band alike.
  grid = [[[report.Series(LABELS[name], kl, *(e[k][b] for b in ("mean", "low", "high")),
                          dashed=k == "proxy_gain")
            for name, e in ((name, summary["noise"][f"{noise:g}"][name])
                            for name in c.objectives)]
           for noise in c.noise_levels] for k in ("gold_gain", "proxy_gain")]
  paths.append(report.plot_bands(
      stem("gold_vs_kl.png"), grid, [f"label noise {noise:.0%}" for noise in c.noise_levels],
      "KL_bon(n) = log n - (n-1)/n",
      ["gold gain over n = 1", "proxy gain over n = 1 (normalised)"]))
  return paths


def run(config) -> dict:
  """The whole experiment; returns the summary (also written to the workdir)."""
  start = time.time()
  c = apply_scale(config)
  os.makedirs(c.workdir, exist_ok=True)
  ns = n_grid(c)
  task = synthetic.build_task(synthetic.SyntheticConfig(**c.task.to_dict()))
  key = jax.random.fold_in(jax.random.key(c.task.seed), c.bon.prompt_key)
  prompts, prompt_len = task.sample_prompts(key, c.bon.num_prompts)
  prompt_mask = np.arange(prompts.shape[1])[None] < prompt_len[:, None]
  per_seed, evals = [], {}
  for seed in c.seeds:
    curves, evals[str(seed)] = run_seed(c, task, prompts, prompt_mask, ns, seed)
    per_seed.append(curves)
  summary = summarise(c, per_seed, ns)
  seconds = time.time() - start
  report.announce(write_outputs(c, summary, evals, seconds), verdicts(c, summary), seconds)
  return summary


if __name__ == "__main__":
  cli.main(run)
