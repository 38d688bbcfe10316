"""The PPO overoptimisation study's statistics: per-iteration trajectories to gold at
matched KL, intervals, preconditions, controls and verdicts
(``experiments/overoptimization_ppo.py`` collects the trajectories).

Gold at a KL value k of one run is read off its trajectory, never from its final step: the
first iteration whose centred running mean of KL (over ``c.smooth`` iterations) reaches k,
and the ``c.smooth`` per-iteration gold values centred on it. Each of those is the mean
gold of one rollout on fresh prompts, so they are the items within a seed of the
hierarchical bootstrap (seeds, then iterations). A method is compared with the single RM
at the largest KL that both reach in every seed (a paired difference on the same seeds),
and the comparisons with the single RM are Holm-corrected.
"""

from __future__ import annotations

import os

import numpy as np

from experiments import bon_analysis, report, stats

CONTROL = "gold"  # the method name of PPO against the gold reward itself
CLAIMS = {  # claim -> (paper, sentence)
    "gao": ("Gao et al. 2022", "PPO against one proxy overoptimises: gold at the largest KL "
            "reached is below its peak along the trajectory"),
    "coste": ("Coste et al. 2023", "a conservative objective reaches more gold than a single "
              "reward model at the same KL"),
    "coste_kl": ("Coste et al. 2023", "with a small KL penalty, a conservative objective "
                 "still reaches more gold than a single reward model at the same KL"),
}


def running_mean(x, width: int) -> np.ndarray:
  """Centred running mean over ``width`` (odd) points of the last axis of ``x``; the window
  shrinks at the ends."""
  if width < 1 or width % 2 == 0:
    raise ValueError(f"smooth={width} must be an odd integer >= 1")
  x = np.asarray(x, np.float64)
  n, half = x.shape[-1], width // 2
  sums = np.concatenate([np.zeros(x.shape[:-1] + (1,)), np.cumsum(x, axis=-1)], axis=-1)
  lo, hi = np.maximum(np.arange(n) - half, 0), np.minimum(np.arange(n) + half + 1, n)
  return (sums[..., hi] - sums[..., lo]) / (hi - lo)


def reach(kl, width: int) -> float:
  """The largest smoothed KL a trajectory reaches."""
  return float(running_mean(kl, width).max())


def window_at(gold, kl, target: float, width: int) -> np.ndarray:
  """The ``width`` per-iteration gold values centred on the first iteration whose smoothed
  KL reaches ``target`` (shifted inside the run at its ends). Raises if it never does."""
  smoothed = running_mean(kl, width)
  hits = np.flatnonzero(smoothed >= target)
  if not hits.size:
    raise ValueError(f"KL {target:.4g} is beyond the trajectory's reach {smoothed.max():.4g}")
  start = int(np.clip(hits[0] - width // 2, 0, max(0, len(gold) - width)))
  return np.asarray(gold, np.float64)[start:start + width]


def _windows(c, per_seed, method: str, target: float) -> np.ndarray:
  """[seeds, smooth] gold windows of ``method`` at KL ``target``."""
  return np.stack([window_at(s["curves"][method]["gold"], s["curves"][method][c.kl_metric],
                             target, c.smooth) for s in per_seed])


def _reach(c, per_seed, method: str) -> float:
  """The KL every seed's run of ``method`` reaches."""
  return min(reach(s["curves"][method][c.kl_metric], c.smooth) for s in per_seed)


def _boot(c, values) -> dict:
  return stats.hierarchical_bootstrap(values, num_resamples=c.bootstrap.resamples,
                                      seed=c.bootstrap.seed)


def _paired(c, a, b) -> dict:
  return stats.paired_difference(a, b, num_resamples=c.bootstrap.resamples,
                                 seed=c.bootstrap.seed)


def grid(c, per_seed, names) -> np.ndarray:
  """The plotted KL values: top · (g / grid_points)², top the largest reach of any method."""
  top = max(_reach(c, per_seed, m) for m in names)
  g = np.arange(1, c.grid_points + 1)
  return top * (g / c.grid_points) ** 2


def curves(c, per_seed, names, kls) -> dict:
  """{method: [interval or None per KL]}: gold at every grid KL the method reaches."""
  return {m: [_boot(c, _windows(c, per_seed, m, k)) if k <= _reach(c, per_seed, m) else None
              for k in kls] for m in names}


def overoptimisation(c, per_seed, kls) -> dict:
  """The single RM's gold at its peak grid KL minus gold at its largest common KL."""
  top = _reach(c, per_seed, "single")
  points = [k for k in kls if k <= top] or [top]
  means = [_windows(c, per_seed, "single", k).mean() for k in points]
  peak = points[int(np.argmax(means))]
  return {"peak_kl": peak, "top_kl": top, **_paired(
      c, _windows(c, per_seed, "single", peak), _windows(c, per_seed, "single", top))}


def comparisons(c, per_seed, names) -> dict:
  """{method: paired difference with "single" at the largest KL both reach, + Holm}."""
  out = {}
  for m in names:
    if m == "single":
      continue
    k = min(_reach(c, per_seed, m), _reach(c, per_seed, "single"))
    a, b = _windows(c, per_seed, m, k), _windows(c, per_seed, "single", k)
    out[m] = {"kl": k, "gold": _boot(c, a), "single_gold": _boot(c, b), **_paired(c, a, b)}
  corrected = stats.holm({m: d["p_value"] for m, d in out.items()}, c.alpha)
  for m in out:
    out[m]["holm"] = corrected[m]
  return out


def preconditions(c, turns: dict, trained: dict, per_seed) -> list[dict]:
  """The best-of-n study's: gold turns inside the proxies' training data, and the members
  disagree where their mean is wrong (on this study's base samples)."""
  corr = {"proxy": np.stack([s["disagreement_error_corr"] for s in per_seed])}
  return bon_analysis.preconditions(c, turns, trained, corr)


def controls(c, per_seed) -> list[dict]:
  """PPO against gold raises gold (last window above the first, paired per seed); every
  run's first iteration samples the reference policy itself (KL 0)."""
  w = c.smooth
  first = np.stack([s["curves"][CONTROL]["gold"][:w] for s in per_seed])
  last = np.stack([s["curves"][CONTROL]["gold"][-w:] for s in per_seed])
  gain = _paired(c, last, first)
  kl0 = max(abs(float(curve[c.kl_metric][0])) for s in per_seed for curve in s["curves"].values())
  return [
      stats.control("gold_ppo_raises_gold", gain["low"] > 0,
                    f"PPO against the gold reward: gold of its last {w} iterations minus its "
                    f"first {w}: {report.interval(gain, True)}", value=gain),
      stats.control("first_iteration_samples_the_reference", kl0 < 1e-4,
                    f"largest |KL| of any run's first iteration {kl0:.2e} (π = π_ref there)",
                    value=kl0)]


def cost(c, per_seed, names) -> dict:
  """Per method: PPO wall seconds (mean over seeds) and reward-model member evaluations
  per run (rollout episodes plus normalisation samples, times the members it needs)."""
  episodes = c.ppo.rl.iterations * c.ppo.rl.prompts * c.ppo.rl.samples_per_prompt
  norm = c.norm.prompts * c.norm.samples
  k = int(c.proxy.k)
  return {"proxy_train_seconds": float(np.mean([s["train_seconds"] for s in per_seed])),
          "ppo_seconds": {m: float(np.mean([s["seconds"][m] for s in per_seed]))
                          for m in [*names, CONTROL]},
          "rm_evaluations": {m: (episodes + norm) * (1 if m == "single" else k) for m in names}}


def summarise(c, per_seed, turns: dict, trained: dict) -> dict:
  """Every interval, comparison, precondition, control and verdict of the study."""
  names = [m for m in per_seed[0]["curves"] if m != CONTROL]
  kls = grid(c, per_seed, names)
  summary = {
      "precondition": preconditions(c, turns, trained, per_seed),
      "controls": controls(c, per_seed), "kl_grid": kls,
      "curves": curves(c, per_seed, [*names, CONTROL], kls),
      "base_gold": _boot(c, np.stack([s["base_gold"] for s in per_seed])),
      "uwo_lam": [s["uwo_lam"] for s in per_seed],
      "member_variance": [s["member_variance"] for s in per_seed],
      "reach": {m: _reach(c, per_seed, m) for m in [*names, CONTROL]},
      "overoptimisation": overoptimisation(c, per_seed, kls),
      "vs_single": comparisons(c, per_seed, names),
      "proxy_eval": [s["evals"] for s in per_seed], "cost": cost(c, per_seed, names)}
  summary["verdicts"] = verdicts(summary)
  return summary


def _ok(summary, prefix: str) -> bool:
  return all(p["ok"] for p in summary["precondition"] if p["name"].startswith(prefix))


def verdicts(summary) -> dict:
  """claim/method -> {"verdict", "paper", "claim", "evidence"}; the harness message when a
  control failed."""
  broken = stats.harness_message(summary["controls"])
  turns_ok = _ok(summary, "gold_turns_in_training_data")
  members_ok = turns_ok and _ok(summary, "members_disagree_where_wrong")
  out = {}
  drop = summary["overoptimisation"]
  out["gao"] = {"verdict": broken or stats.verdict(drop, 1, turns_ok), "paper": CLAIMS["gao"][0],
                "claim": CLAIMS["gao"][1],
                "evidence": f"gold at KL {drop['peak_kl']:.3g} minus at {drop['top_kl']:.3g}: "
                            f"{report.interval(drop, True)}"}
  for m, d in summary["vs_single"].items():
    objective = m.split("+")[0]
    if objective not in ("wco", "uwo"):
      continue
    claim = "coste_kl" if "+kl" in m else "coste"
    out[f"{claim}/{m}"] = {
        "verdict": broken or stats.corrected_verdict(d, d["holm"], 1, members_ok),
        "paper": CLAIMS[claim][0], "claim": CLAIMS[claim][1],
        "evidence": f"{m} - single gold at KL {d['kl']:.3g}: {report.interval(d, True)}, d_z "
                    f"{d['effect_size']:+.2f}, Holm p {d['holm']['p_adjusted']:.3g}"}
  return out


def verdict_lines(summary) -> list[str]:
  """Preconditions and controls first, then one line per verdict."""
  return report.verdict_lines(summary, "95% hierarchical-bootstrap intervals over seeds and "
                              "iterations at matched KL; comparisons with the single RM "
                              "Holm-corrected")


def write_outputs(c, summary) -> list[str]:
  """results.md (preconditions, controls, table, verdicts), results.csv, curves.csv,
  results.json and gold_vs_kl.png."""
  costs = summary["cost"]
  rows = [{"method": "single", "kl": summary["reach"]["single"], "gold": None, "diff": None,
           "d_z": None, "holm_p": None, "seconds": costs["ppo_seconds"]["single"],
           "rm_evaluations": costs["rm_evaluations"]["single"]}]
  rows += [{"method": m, "kl": d["kl"],
            "gold": f"{report.interval(d['gold'])} vs {report.interval(d['single_gold'])}",
            "diff": report.interval(d), "d_z": d["effect_size"], "holm_p": d["holm"]["p_adjusted"],
            "seconds": costs["ppo_seconds"][m], "rm_evaluations": costs["rm_evaluations"][m]}
           for m, d in summary["vs_single"].items()]
  stem = lambda name: os.path.join(c.workdir, name)
  paths = report.write_table(stem("results"), [
      ("method", "method"), ("kl", "matched KL (reach for single)"),
      ("gold", "gold at matched KL: method vs single"), ("diff", "method - single"),
      ("d_z", "d_z"), ("holm_p", "Holm p"), ("seconds", "PPO s/run"),
      ("rm_evaluations", "RM member evals/run")], rows)
  report.prepend(paths[0], verdict_lines(summary))
  curve_rows = [{"method": m, "kl": float(k), "gold_mean": e["mean"], "gold_low": e["low"],
                 "gold_high": e["high"]}
                for m, points in summary["curves"].items()
                for k, e in zip(summary["kl_grid"], points) if e is not None]
  paths += report.write_table(stem("curves"), [(k, k) for k in curve_rows[0]], curve_rows)[1:]
  paths.append(report.write_json(stem("results.json"), {"config": c.to_dict(), **summary}))
  panel = []
  for m, points in summary["curves"].items():
    keep = [(k, e) for k, e in zip(summary["kl_grid"], points) if e is not None]
    if keep:
      panel.append(report.Series(m, np.array([k for k, _ in keep]),
                                 *(np.array([e[b] for _, e in keep])
                                   for b in ("mean", "low", "high")),
                                 dashed=m == CONTROL))
  paths.append(report.plot_bands(stem("gold_vs_kl.png"), [[panel]],
                                 [f"label noise {c.label_noise:.0%}, {c.proxy.kind}-diverse"],
                                 f"KL ({c.kl_metric}, running mean)", ["gold reward"]))
  return paths
