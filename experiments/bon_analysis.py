"""The best-of-n study's statistics: per-(seed, prompt) curves to intervals, preconditions,
controls and verdicts (``experiments/overoptimization_bon.py`` collects the curves).

Every interval is a hierarchical bootstrap over seeds, then prompts within a seed
(``experiments/stats.py``); a comparison of two objectives is a paired difference on the
same seeds, prompts and samples; comparisons with one baseline are Holm-corrected.
"""

from __future__ import annotations

import os

import numpy as np

from experiments import report, stats
from rmjax.objectives import bon

LENGTH_BIAS = 0.5  # |corr(reward, length)| above this: the length-bias diagnostic flags it
MIN_PAST_TURN = 0.15  # share of training responses past a turn for the fall to be seen
CLAIMS = {  # claim -> (paper, sentence)
    "gao": ("Gao et al. 2022", "best-of-n against one proxy overoptimises: gold rises, "
            "peaks, then falls by the largest n"),
    "coste": ("Coste et al. 2023", "a conservative objective ends with more gold than a "
              "single reward model at the largest n"),
    "eisenstein_diverse": ("Eisenstein et al. 2023", "pretrain-diverse ensembles end with "
                           "more gold than finetune-diverse ones (mean objective)"),
    "eisenstein_herding": ("Eisenstein et al. 2023", "ensembles still overoptimise: the "
                           "pretrain-diverse mean's gold falls from its peak"),
}


def disagreement_correlation(members, gold) -> float:
  """Pearson correlation of member disagreement with the ensemble mean's error against
  gold over one prompt's samples (members [N, K], gold [N])."""
  return stats.disagreement_error_correlation(members, gold)["pearson"]


def _boot(c, values) -> dict:
  return stats.hierarchical_bootstrap(values, num_resamples=c.bootstrap.resamples,
                                      seed=c.bootstrap.seed)


def _paired(c, a, b) -> dict:
  return stats.paired_difference(a, b, num_resamples=c.bootstrap.resamples,
                                 seed=c.bootstrap.seed)


def curve_summary(c, gold, kl) -> dict:
  """Intervals of one objective's curve. gold [seeds, P, M] -> the gain over n = 1 at
  every n, at the largest n, the drop from the mean curve's peak, and Gao's α, β (fitted
  per seed to the prompt-mean gain; t-interval over seeds)."""
  gain = gold - gold[..., :1]
  peak = int(np.argmax(gain.mean((0, 1))))
  fits = np.array([bon.fit_gao_bon(kl, g.mean(0)) for g in gain])
  out = {"gain": [_boot(c, gain[..., m]) for m in range(gain.shape[-1])],
         "final_gain": _boot(c, gain[..., -1]), "peak_index": peak,
         "drop_from_peak": _boot(c, gold[..., peak] - gold[..., -1])}
  for i, name in enumerate(("alpha", "beta")):
    mean, low, high = stats.t_interval(fits[:, i])
    out[name] = {"mean": float(mean), "low": float(low), "high": float(high)}
  return out


def preconditions(c, turns: dict, trained: dict, corr: dict) -> list[dict]:
  """The turns lie inside the proxies' training data; per ensemble, members disagree
  where their mean is wrong (bootstrap interval of the per-prompt correlation above 0)."""
  out = []
  for name, turn in turns.items():
    f, gold = trained[name], trained["gold"]
    past = float(np.mean(f > turn["argmax"]))
    at, beyond = (float(gold[m].mean()) if m.any() else None
                  for m in (f == turn["argmax"], f >= turn["argmax"] + 2))
    falls = at is not None and beyond is not None and beyond < at
    shown = lambda x: "none" if x is None else f"{x:.2f}"
    out.append(stats.precondition(
        f"gold_turns_in_training_data/{name}", {"past_turn": past, "gold_at_turn": at,
                                                "gold_two_past": beyond},
        past > MIN_PAST_TURN and falls,
        f"turn at {name} = {turn['argmax']} (base percentile {turn['percentile']:.2f}); "
        f"{past:.0%} of training responses lie past it; mean gold {shown(at)} there, "
        f"{shown(beyond)} two or more past"))
  for name, values in corr.items():
    interval = _boot(c, values)
    out.append(stats.precondition(
        f"members_disagree_where_wrong/{name}", interval, interval["low"] > 0,
        f"corr(member std, |mean - gold|) over each prompt's samples: {interval['mean']:.3f} "
        f"[{interval['low']:.3f}, {interval['high']:.3f}]"))
  return out


def controls(c, per_seed: list[dict], kl) -> tuple[list[dict], dict]:
  """Best-of-n on gold itself is monotone in n; a pure-length reward is flagged by the
  length-bias diagnostic and best-of-n on it loses gold from its peak."""
  gold = np.stack([s["controls"]["gold"]["gold"] for s in per_seed])  # [seeds, P, M]
  monotone = bool(np.all(np.diff(gold, axis=-1) >= -1e-5))
  length = np.stack([s["controls"]["length"]["gold"] for s in per_seed])
  bias = min(s["length_bias"] for s in per_seed)
  length_curve = curve_summary(c, length, kl)
  drop = length_curve["drop_from_peak"]
  records = [
      stats.control("gold_best_of_n_is_monotone", monotone,
                    "best-of-n ranked by gold itself: gold never falls as n grows"),
      stats.control("pure_length_reward_is_hackable", bias > LENGTH_BIAS and drop["low"] > 0,
                    f"length-bias diagnostic corr {bias:.2f} (> {LENGTH_BIAS} flags it); gold "
                    f"of best-of-n by length falls {drop['mean']:.3f} [{drop['low']:.3f}, "
                    f"{drop['high']:.3f}] from its peak", value=drop)]
  return records, {"gold": curve_summary(c, gold, kl), "length": length_curve}


def summarise(c, per_seed: list[dict], ns, turns: dict, trained: dict) -> dict:
  """Every interval, comparison, precondition, control and verdict of the study."""
  kl = np.asarray(bon.kl_bon(ns), np.float64)
  names = list(per_seed[0]["ensembles"])
  objectives = list(per_seed[0]["ensembles"][names[0]]["curves"])
  final, blocks = {}, {}
  for name in names:
    ens = [s["ensembles"][name] for s in per_seed]
    block = {"member_variance": [e["member_variance"] for e in ens], "objectives": {}}
    for obj in objectives:
      gold = np.stack([e["curves"][obj]["gold"] for e in ens])  # [seeds, P, M]
      final[name, obj] = gold[..., -1]
      block["objectives"][obj] = curve_summary(c, gold, kl)
    diffs = {obj: _paired(c, final[name, obj], final[name, "single"])
             for obj in objectives if obj != "single"}
    corrected = stats.holm({obj: d["p_value"] for obj, d in diffs.items()})
    block["vs_single"] = {obj: {**d, "holm": corrected[obj]} for obj, d in diffs.items()}
    blocks[name] = block
  corr = {name: np.stack([s["ensembles"][name]["disagreement_error_corr"] for s in per_seed])
          for name in names}
  pre = preconditions(c, turns, trained, corr)
  ctrl, control_summary = controls(c, per_seed, kl)
  summary = {"n": ns, "kl": kl, "turns": turns, "precondition": pre, "controls": ctrl,
             "control_curves": control_summary, "ensembles": blocks,
             "proxy_eval": [s["evals"] for s in per_seed],
             "cost": cost(c, per_seed, names, objectives)}
  if {"pretrain", "finetune"} <= set(c.kinds):
    summary["pretrain_vs_finetune"] = {
        f"{noise:g}": {obj: _paired(c, final[f"pretrain/{noise:g}", obj],
                                    final[f"finetune/{noise:g}", obj])
                       for obj in ("single", "mean")} for noise in c.noise_levels}
  summary["verdicts"] = verdicts(c, summary)
  return summary


def cost(c, per_seed, names, objectives) -> dict:
  """Per ensemble: training wall seconds (mean over seeds); per objective: reward-model
  evaluations per seed (members x prompts x samples; one member for "single")."""
  samples = c.bon.num_prompts * c.bon.num_samples
  return {"sample_and_score_seconds": float(np.mean([s["sample_seconds"] for s in per_seed])),
          "train_seconds": {n: float(np.mean([s["cost"][n]["train_seconds"] for s in per_seed]))
                            for n in names},
          "rm_evaluations": {obj: samples * (1 if obj == "single" else c.proxy.k)
                             for obj in objectives}}


def _ok(summary, prefix: str) -> bool:
  return all(p["ok"] for p in summary["precondition"] if p["name"].startswith(prefix))


def verdicts(c, summary) -> dict:
  """claim/ensemble -> {"verdict", "paper", "claim", "evidence"}; "harness broken" when a
  control failed."""
  broken = stats.harness_message(summary["controls"])
  turns_ok = _ok(summary, "gold_turns_in_training_data")
  out = {}

  def add(key, claim, decided, evidence):
    out[key] = {"verdict": broken or decided, "paper": CLAIMS[claim][0],
                "claim": CLAIMS[claim][1], "evidence": evidence}

  for name, block in summary["ensembles"].items():
    drop = block["objectives"]["single"]["drop_from_peak"]
    add(f"gao/{name}", "gao", stats.verdict(drop, 1, turns_ok), _fmt("single drop", drop))
    members_ok = turns_ok and _ok(summary, f"members_disagree_where_wrong/{name}")
    for obj, d in block["vs_single"].items():
      if obj != "mean":
        add(f"coste/{name}/{obj}", "coste",
            stats.corrected_verdict(d, d["holm"], 1, members_ok),
            _fmt(f"{obj} - single final gold", d) + f", Holm p {d['holm']['p_adjusted']:.3g}")
  for noise, block in summary.get("pretrain_vs_finetune", {}).items():
    d = block["mean"]
    add(f"eisenstein_diverse/{noise}", "eisenstein_diverse", stats.verdict(d, 1, turns_ok),
        _fmt("pretrain - finetune mean final gold", d))
    name = f"pretrain/{noise}"
    drop = summary["ensembles"][name]["objectives"]["mean"]["drop_from_peak"]
    add(f"eisenstein_herding/{noise}", "eisenstein_herding", stats.verdict(drop, 1, turns_ok),
        _fmt("mean drop", drop))
  return out


def _fmt(label: str, x: dict) -> str:
  return f"{label} {report.interval(x, True)}"


def verdict_lines(summary) -> list[str]:
  """Preconditions and controls first, then one line per verdict."""
  return report.verdict_lines(summary, "95% hierarchical-bootstrap intervals over seeds and "
                              "prompts; comparisons with the single RM Holm-corrected per "
                              "ensemble")


def write_outputs(c, summary) -> list[str]:
  """results.md (preconditions, controls, table, verdicts), results.csv, curves.csv,
  results.json and gold_vs_kl.png."""
  ns, kl = summary["n"], summary["kl"]
  rows, curve_rows = [], []
  for name, block in summary["ensembles"].items():
    for obj, e in block["objectives"].items():
      d = block["vs_single"].get(obj)
      rows.append({"ensemble": name, "objective": obj,
                   "final": report.interval(e["final_gain"]), "peak_n": int(ns[e["peak_index"]]),
                   "drop": report.interval(e["drop_from_peak"]),
                   "alpha": report.interval(e["alpha"]), "beta": report.interval(e["beta"]),
                   "diff": report.interval(d) if d else None,
                   "holm_p": d["holm"]["p_adjusted"] if d else None})
      for i, n in enumerate(ns):
        g = e["gain"][i]
        curve_rows.append({"ensemble": name, "objective": obj, "n": int(n),
                           "kl": float(kl[i]), "gold_gain_mean": g["mean"],
                           "gold_gain_low": g["low"], "gold_gain_high": g["high"]})
  stem = lambda name: os.path.join(c.workdir, name)
  paths = report.write_table(stem("results"), [
      ("ensemble", "ensemble/noise"), ("objective", "objective"),
      ("final", f"gold gain at n={ns[-1]}"), ("peak_n", "peak n"), ("drop", "drop from peak"),
      ("alpha", "Gao α"), ("beta", "Gao β"), ("diff", "final gold - single"),
      ("holm_p", "Holm p")], rows)
  report.prepend(paths[0], verdict_lines(summary))
  paths += report.write_table(stem("curves"), [(k, k) for k in curve_rows[0]], curve_rows)[1:]
  paths.append(report.write_json(stem("results.json"), {"config": c.to_dict(), **summary}))
  grid = [[[report.Series(obj, kl, *(np.array([g[b] for g in e["gain"]])
                                     for b in ("mean", "low", "high")))
            for obj, e in summary["ensembles"][f"{kind}/{noise:g}"]["objectives"].items()]
           for noise in c.noise_levels] for kind in c.kinds]
  paths.append(report.plot_bands(
      stem("gold_vs_kl.png"), grid, [f"label noise {noise:.0%}" for noise in c.noise_levels],
      "KL_bon(n) = log n - (n-1)/n", [f"{kind}-diverse: gold gain over n = 1"
                                      for kind in c.kinds]))
  return paths
