"""Secrets of RLHF II on the synthetic task, against a sweep of known label noise.

  python experiments/secrets_rm.py --config=experiments/configs/secrets_rm.py

For every seed and every label-noise rate r of ``noise_rates`` (the swapped pairs known,
``flipped``; the sets nested over r):
1. Strength. An ensemble of ``strength.members`` reward models trained in folds
   (``train-rm --config.ensemble.folds``); ``rmjax score-pairs`` measures every training
   pair's strength out of fold (and in sample, the paper's way). Against the known swaps:
   precision and recall of "the lowest-strength fraction r is swapped" (random selection
   gets r for both) and the AUROC of −μ. Precondition: the ensemble agrees with the gold
   reward on the clean held-out pairs above chance (else strength is not testable).
2. Recipes. One reward model per method, each a ``train-rm`` run with that method's flags
   (the strength file of step 1 for flip / smoothing / margin; ``loss.contrastive`` for
   SimCSE / SwAV / goal-conditioned). Every run, BT included, has the same dropout. Each is
   judged pair by pair on the clean held-out pairs (agreement with the gold reward), paired
   against BT at the same r and seed, Holm-corrected across methods per r; "grows with
   noise" is the least-squares slope over r of that per-pair difference.
3. MetaRM (``experiments/secrets_metarm.py``) against the BT model at ``metarm.noise``.
Then, with ``hh``, the HH-RLHF fraction of pairs with μ < 0 (``experiments/secrets_hh.py``).

Writes results.md (preconditions, controls, verdicts, tables), robustness/strength/metarm
.md/.csv, results.json, per_pair.npz (every per-pair correctness array), gold_vs_noise.png
and strength_vs_spread.png into the workdir.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli, report, secrets_metarm, stats  # noqa: E402
from rmjax.commands import score_pairs  # noqa: E402
from rmjax.configs import score_pairs as score_pairs_config  # noqa: E402
from rmjax.configs import train_rm  # noqa: E402
from rmjax.data import schema
from rmjax.objectives import preference_strength as ps
from rmjax.rm import batches as rm_batches
from rmjax.rm import build as rm_build
from rmjax.rm import contrastive_terms, strength
from rmjax.rm import load as load_rm
from rmjax.rm import trainer as rm_trainer
from rmjax.tasks import preference as synthetic

# Each method's train-rm flags; "flip" / "smoothing" stand for the config's values.
METHODS = {
    "bt": {},
    "flip": {"data.strength.flip_fraction": "flip"},
    "smoothing": {"data.strength.smoothing": "smoothing"},
    "margin": {"data.strength.adaptive_margin": True},
    "flip+margin": {"data.strength.flip_fraction": "flip", "data.strength.adaptive_margin": True},
    "soft+margin": {"data.strength.smoothing": "smoothing",
                    "data.strength.adaptive_margin": True},
    "simcse": {"loss.contrastive.kind": "simcse"},
    "swav": {"loss.contrastive.kind": "swav"},
    "goal": {"loss.contrastive.kind": "goal"},
}
# The sign of (method − BT) gold agreement each paper claims, and of its growth with noise:
# every recipe and contrastive term is claimed to raise it, more so on noisier data.
EXPECTED_SIGN = {name: 1 for name in METHODS if name != "bt"}
CLAIMS = {
    "repair": ("Secrets II §2.4, Figs. 4-6", "flipping, smoothing or a margin on low-strength "
               "pairs raises held-out agreement with the true preference over BT"),
    "contrastive": ("Secrets II §3.1, Figs. 7-8 (goal: Nath et al. 2024)",
                    "a contrastive term raises held-out agreement with the true preference "
                    "over BT"),
    "growth": ("Secrets II §2-3", "the gain over BT grows with the label-noise rate"),
    "strength": ("Secrets II §2.2", "the lowest-strength pairs are the mislabelled ones"),
    "metarm": ("Secrets II §3.2", "MetaRM orders the shifted policy's responses as the true "
               "preference does more often than BT"),
}


def noise_key(rate: float) -> str:
  return f"{rate:g}"


def rm_config(c, workdir: str, seed: int, noise: float,
              flags: dict | None = None) -> ml_collections.ConfigDict:
  """``train-rm``'s defaults, ``c.rm``, the task at label noise ``noise`` and the one
  dropout rate (model and contrastive views) on top, then ``flags`` (dotted names)."""
  t = train_rm.get_config()
  for section, fields in c.rm.items():
    t[section].update(fields.to_dict())
  t.data.synthetic = ml_collections.ConfigDict({**c.task.to_dict(), "label_noise": noise})
  t.model.dropout_rate = float(c.dropout)
  t.loss.contrastive.dropout = float(c.dropout)
  t.seed = seed
  steps = t.train.steps
  t.train.update(workdir=workdir, eval_every=steps, save_every=steps, log_every=steps)
  for name, value in (flags or {}).items():
    *path, leaf = name.split(".")
    node = t
    for part in path:
      node = node[part]
    node[leaf] = value
  return t


def model_dropout(t) -> float:
  """The dropout rate of the model a train-rm config ``t`` builds (its loss's fields too)."""
  fields = contrastive_terms.model_fields(t.loss.contrastive)
  return rm_build.build_model_config(t.model, t.data.synthetic.vocab_size,
                                     **fields).dropout_rate


def method_flags(c, method: str, strength_file: str) -> dict:
  flags = {}
  for name, value in METHODS[method].items():
    flags[name] = {"flip": c.flip_fraction, "smoothing": c.smoothing}.get(value, value)
  if any(name.startswith("data.strength") for name in flags):
    flags["data.strength.path"] = strength_file
  return flags


def train(config) -> dict:
  """A fresh ``train-rm`` run (any earlier run in its workdir is removed first)."""
  shutil.rmtree(config.train.workdir, ignore_errors=True)
  return rm_trainer.train(config)["eval"]


def detection_at_rate(mu, flipped, rate: float) -> dict | None:
  """Low strength against the known swaps, selecting the lowest ``rate`` fraction by μ
  (``ps.flip_lowest``). None when nothing was swapped.

  Returns {"precision_items": float [selected] (1 where a selected pair is swapped),
  "recall_items": float [swapped] (1 where a swapped pair is selected), "auroc" of −μ}.
  Random selection has expected precision and recall ``rate``.
  """
  flipped = np.asarray(flipped, bool)
  if not flipped.any() or flipped.all():
    return None
  selected = np.asarray(ps.flip_lowest(np.asarray(mu, np.float32), float(rate)))
  return {"precision_items": flipped[selected].astype(np.float64),
          "recall_items": selected[flipped].astype(np.float64),
          "auroc": ps.auroc(-np.asarray(mu, np.float64), flipped)}


def noise_slope(diffs, rates) -> np.ndarray:
  """float [N]: per item, the least-squares slope over ``rates`` [R] of ``diffs`` [R, N]."""
  d, r = np.asarray(diffs, np.float64), np.asarray(rates, np.float64)
  if d.ndim != 2 or d.shape[0] != r.shape[0] or r.shape[0] < 2:
    raise ValueError(f"diffs, rates: need [R >= 2, N] and [R], got {d.shape}, {r.shape}")
  centred = r - r.mean()
  return centred @ (d - d.mean(0)) / (centred @ centred)


def measure_strength(c, seed: int, noise: float, workdir: str, eval_arrays: dict) -> dict:
  """Trains the folded ensemble once and scores the training pairs out of fold and in
  sample: μ, σ [N] of each, the known swaps [N], the ensemble's per-pair held-out gold
  correctness, the trainer's own agreement and the wall time."""
  start = time.time()
  run_dir = os.path.join(workdir, "ensemble")
  t = rm_config(c, run_dir, seed, noise, {"ensemble.k": c.strength.members,
                                          "ensemble.folds": c.strength.folds})
  evaluation = train(t)
  out = {"flipped": rm_batches.train_pairs(t.data)[schema.FLIPPED].astype(bool),
         "trainer_agreement": evaluation["gold_agreement"]}
  for variant, in_sample in (("out_of_fold", False), ("in_sample", True)):
    sc = score_pairs_config.get_config()
    sc.update(workdir=run_dir, in_sample=in_sample,
              output=os.path.join(workdir, f"strength_{variant}.npz"))
    s = strength.load(score_pairs.run(sc)["output"])
    out[f"mu_{variant}"], out[f"sigma_{variant}"] = s.mu, s.sigma
  scorer, _ = load_rm.load_ensemble(run_dir)
  out["held_out"] = secrets_metarm.pair_correct(scorer, eval_arrays)
  out["seconds"] = time.time() - start
  return out


def run_cell(c, seed: int, noise: float, eval_arrays: dict) -> dict:
  """Strength and every method at one (seed, noise rate): per-pair held-out correctness
  [N] of each method, the trainers' agreements, wall seconds, and the strength record."""
  workdir = os.path.join(c.workdir, f"seed{seed}", f"noise{noise_key(noise)}")
  cell = {"strength": measure_strength(c, seed, noise, workdir, eval_arrays),
          "held_out": {}, "trainer_agreement": {}, "seconds": {}}
  strength_file = os.path.join(workdir, "strength_out_of_fold.npz")
  for method in c.methods:
    start = time.time()
    run_dir = os.path.join(workdir, method)
    ev = train(rm_config(c, run_dir, seed, noise, method_flags(c, method, strength_file)))
    scorer, _ = load_rm.load_ensemble(run_dir)
    cell["held_out"][method] = secrets_metarm.pair_correct(scorer, eval_arrays)
    cell["trainer_agreement"][method] = ev["gold_agreement"]
    cell["seconds"][method] = time.time() - start
  s = cell["strength"]
  found = detection_at_rate(s["mu_out_of_fold"], s["flipped"], noise)
  print(f"seed {seed} noise {noise:g}: out-of-fold strength AUROC "
        + (f"{found['auroc']:.3f}" if found else "- (nothing swapped)")
        + f", ensemble {s['held_out'].mean():.3f} ({s['seconds']:.0f}s); gold agreement "
        + ", ".join(f"{m} {cell['held_out'][m].mean():.3f} ({cell['seconds'][m]:.0f}s)"
                    for m in c.methods), flush=True)
  return cell


def finite(d: dict) -> dict:
  """``paired_difference``'s dict with a non-finite effect size (constant differences) as
  None, so that the JSON stays standard."""
  e = d.get("effect_size")
  return {**d, "effect_size": e if e is None or np.isfinite(e) else None}


def robustness(c, cells, boot) -> dict:
  """Gold agreement per method and rate; paired differences against BT, Holm-corrected
  across methods per rate; the per-pair slope over rates of the difference (Holm across
  methods). ``cells[seed][rate]``."""
  rates = list(c.noise_rates)
  rows = lambda m, r: [seed[r]["held_out"][m] for seed in cells]
  others = [m for m in c.methods if m != "bt"]
  out = {"gold_agreement": {m: {noise_key(r): stats.hierarchical_bootstrap(rows(m, r), **boot)
                                for r in rates} for m in c.methods},
         "vs_bt": {}, "slope": {}}
  for r in rates:
    diffs = {m: finite(stats.paired_difference(rows(m, r), rows("bt", r), **boot))
             for m in others}
    holm = stats.holm({m: d["p_value"] for m, d in diffs.items()}) if diffs else {}
    out["vs_bt"][noise_key(r)] = {m: {**d, "holm": holm[m]} for m, d in diffs.items()}
  slopes = {}
  for m in others:
    items = [noise_slope([seed[r]["held_out"][m] - seed[r]["held_out"]["bt"] for r in rates],
                         rates) for seed in cells]
    slopes[m] = finite(stats.paired_difference(items, [np.zeros_like(x) for x in items],
                                               **boot))
  holm = stats.holm({m: d["p_value"] for m, d in slopes.items()}) if slopes else {}
  out["slope"] = {m: {**d, "holm": holm[m]} for m, d in slopes.items()}
  out["noise_hurts_bt"] = finite(stats.paired_difference(rows("bt", rates[0]),
                                                         rows("bt", rates[-1]), **boot))
  return out


def strength_summary(c, cells, boot) -> dict:
  """Per rate: the ensemble's held-out agreement; per scoring variant the AUROC (t-interval
  over seeds), precision and recall at the true rate (bootstrap over seeds, then selected /
  swapped pairs), recall minus the random-selection baseline, and the fraction μ < 0."""
  out = {}
  for r in c.noise_rates:
    s = [seed[r]["strength"] for seed in cells]
    block = {"ensemble_agreement": stats.hierarchical_bootstrap([x["held_out"] for x in s],
                                                                **boot),
             "swapped": [int(x["flipped"].sum()) for x in s], "random_baseline": r}
    for variant in ("out_of_fold", "in_sample"):
      found = [detection_at_rate(x[f"mu_{variant}"], x["flipped"], r) for x in s]
      v = {"fraction_negative": float(np.mean([np.mean(x[f"mu_{variant}"] < 0) for x in s]))}
      if all(f is not None for f in found):
        mean, low, high = stats.t_interval([f["auroc"] for f in found])
        v["auroc"] = {"mean": float(mean), "low": float(low), "high": float(high),
                      "per_seed": [f["auroc"] for f in found]}
        for name in ("precision", "recall"):
          v[name] = stats.hierarchical_bootstrap([f[f"{name}_items"] for f in found], **boot)
        v["recall_minus_random"] = stats.hierarchical_bootstrap(
            [f["recall_items"] - r for f in found], **boot)
      block[variant] = v
    out[noise_key(r)] = block
  return out


def preconditions(c, summary) -> list[dict]:
  out = []
  for key, block in summary["strength"].items():
    a = block["ensemble_agreement"]
    out.append(stats.precondition(
        f"strength_ensemble_above_chance@{key}", a, a["low"] > 0.5,
        f"strength ensemble's held-out gold agreement at noise {key}: {report.interval(a)} "
        "(needs low > 0.5; else strength is not testable)"))
  d = summary["robustness"]["noise_hurts_bt"]
  out.append(stats.precondition(
      "noise_hurts_bt", d, d["low"] > 0,
      f"BT gold agreement at noise {c.noise_rates[0]:g} minus at {c.noise_rates[-1]:g}: "
      f"{report.interval(d, True)} (needs low > 0: else there is nothing for a repair to recover)"))
  if "metarm" in summary:
    out.append(summary["metarm"]["precondition"])
  return out


def controls(c, cells, configs: dict, boot) -> list[dict]:
  """Checks of the harness itself (see the README section)."""
  zero = c.noise_rates[0]
  bt0 = stats.hierarchical_bootstrap([seed[zero]["held_out"]["bt"] for seed in cells], **boot)
  n = c.task.num_train_pairs
  counts = {noise_key(r): [int(seed[r]["strength"]["flipped"].sum()) for seed in cells]
            for r in c.noise_rates}
  exact = all(k == round(r * n) for r in c.noise_rates for k in counts[noise_key(r)])
  gaps = [float(s["mu_out_of_fold"][~s["flipped"]].mean() - s["mu_out_of_fold"][s["flipped"]]
                .mean()) for seed in cells for r in c.noise_rates if r > 0
          for s in (seed[r]["strength"],)]
  mismatch = max(abs(float(seed[r]["held_out"][m].mean()) - seed[r]["trainer_agreement"][m])
                 for seed in cells for r in c.noise_rates for m in c.methods)
  dropouts = {m: model_dropout(t) for m, t in configs.items()}
  tol = 2.0 / c.task.num_eval_pairs
  return [
      stats.control("bt_above_chance_at_zero_noise", bt0["low"] > 0.5,
                    f"BT held-out gold agreement at noise {zero:g}: {report.interval(bt0)} "
                    "(needs low > 0.5)", value=bt0),
      stats.control("injected_swaps_lower_strength", bool(gaps) and min(gaps) > 0,
                    "mean out-of-fold μ of kept labels minus swapped ones, every seed and "
                    f"noise > 0: min {min(gaps, default=float('nan')):.3f} (needs > 0)",
                    value=gaps),
      stats.control("noise_swaps_exactly_the_rate", exact,
                    f"swapped training labels per rate (of {n}; 0 at rate 0)", value=counts),
      stats.control("per_pair_scoring_matches_trainer", mismatch <= tol,
                    f"largest |mean per-pair correctness - trainer's gold agreement|: "
                    f"{mismatch:.4f} (needs <= {tol:.4f})", value=mismatch),
      stats.control("same_dropout_every_method", len(set(dropouts.values())) == 1,
                    f"model dropout per method: {dropouts}", value=dropouts)]


def beats_bt_at(vs_bt: dict, method: str) -> list[str]:
  """The noise rates at which ``method`` gains over BT on the claimed side, Holm-corrected
  across methods (``vs_bt``: robustness's per-rate paired differences)."""
  return [key for key, diffs in vs_bt.items()
          if stats.corrected_verdict(diffs[method], diffs[method]["holm"],
                                     EXPECTED_SIGN[method], True) == stats.REPRODUCED]


def verdicts(c, summary) -> dict:
  """name -> {"verdict", "paper", "claim", "evidence"}; "harness broken: ..." when a
  control failed."""
  broken = stats.harness_message(summary["controls"])
  pre = {p["name"]: p["ok"] for p in summary["precondition"]}
  out = {}

  def add(key, claim, decided, evidence):
    out[key] = {"verdict": broken or decided, "paper": CLAIMS[claim][0],
                "claim": CLAIMS[claim][1], "evidence": evidence}

  top = noise_key(c.noise_rates[-1])
  for key, diffs in summary["robustness"]["vs_bt"].items():
    for m, d in diffs.items():
      needs_strength = any(k.startswith("data.strength") for k in METHODS[m])
      ok = pre[f"strength_ensemble_above_chance@{key}"] if needs_strength else True
      add(f"robustness/{m}@{key}", "repair" if needs_strength else "contrastive",
          stats.corrected_verdict(d, d["holm"], EXPECTED_SIGN[m], ok),
          _fmt(f"{m} - BT", d) + f", Holm p {d['holm']['p_adjusted']:.3g} (across methods)")
  for m, d in summary["robustness"]["slope"].items():
    needs_strength = any(k.startswith("data.strength") for k in METHODS[m])
    ok = pre["noise_hurts_bt"] and (not needs_strength
                                    or pre[f"strength_ensemble_above_chance@{top}"])
    # A slope alone also rises when a method only loses less to BT on noisier data; the
    # claim is a growing gain, so without a gain at some rate it holds only in part.
    gains = beats_bt_at(summary["robustness"]["vs_bt"], m)
    add(f"growth/{m}", "growth",
        stats.corrected_verdict(d, d["holm"], EXPECTED_SIGN[m], ok, partly=not gains),
        _fmt(f"slope of ({m} - BT) over noise", d)
        + f", Holm p {d['holm']['p_adjusted']:.3g} (across methods); beats BT at "
        + (", ".join(gains) if gains else "no rate"))
  for key, block in summary["strength"].items():
    if "recall_minus_random" in block["out_of_fold"]:
      d = block["out_of_fold"]["recall_minus_random"]
      add(f"strength@{key}", "strength",
          stats.verdict(d, 1, pre[f"strength_ensemble_above_chance@{key}"]),
          _fmt(f"out-of-fold recall at rate {key} minus random ({key})", d))
  if "metarm" in summary:
    d = summary["metarm"]["metarm_minus_bt_shifted"]
    add("metarm/shifted", "metarm", stats.verdict(d, 1, pre["policy_is_shifted"]),
        _fmt("MetaRM - BT on the shifted pairs", d))
  return out


def _fmt(label: str, x: dict) -> str:
  """"label +m [+lo, +hi]": a difference, signed."""
  return f"{label} {report.interval(x, True)}"


def cost(c, cells, summary) -> dict:
  """Mean wall seconds per training run of each method, the strength ensemble's (which
  flip / smoothing / margin also need), and MetaRM's sampling and training."""
  runs = [seed[r] for seed in cells for r in c.noise_rates]
  out = {m: {"train_seconds": float(np.mean([x["seconds"][m] for x in runs])),
             "needs_strength_ensemble": any(k.startswith("data.strength") for k in METHODS[m])}
         for m in c.methods}
  out["strength_ensemble"] = {"train_seconds": float(np.mean([x["strength"]["seconds"]
                                                              for x in runs])),
                              "members": c.strength.members}
  if "metarm" in summary:
    out["metarm"] = summary["metarm"]["cost"]
  return out


def verdict_lines(summary) -> list[str]:
  """Preconditions and controls first, then one line per verdict."""
  return report.verdict_lines(summary, "95% hierarchical-bootstrap intervals over seeds, then "
                              "held-out pairs; comparisons with BT Holm-corrected across "
                              "methods per noise rate")


def plot_strength(path: str, s: dict) -> str:
  """μ against σ (out of fold) of every training pair of one run, swapped pairs in red."""
  fig, ax = plt.subplots(figsize=(5.5, 4))
  flipped = s["flipped"]
  for mask, colour, label in ((~flipped, "C0", "label kept"), (flipped, "C3", "label swapped")):
    ax.scatter(s["mu_out_of_fold"][mask], s["sigma_out_of_fold"][mask], s=5, alpha=0.5,
               color=colour, label=label)
  ax.axvline(0, color="k", lw=0.7)
  ax.set_xlabel("strength μ (mean Δ over out-of-fold members)")
  ax.set_ylabel("spread σ")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write_outputs(c, summary: dict, cells, per_pair: dict) -> list[str]:
  stem = lambda name: os.path.join(c.workdir, name)
  rob, keys = summary["robustness"], [noise_key(r) for r in c.noise_rates]
  rows = [{"method": m, **{f"a{k}": report.interval(rob["gold_agreement"][m][k]) for k in keys},
           **{f"d{k}": report.interval(rob["vs_bt"][k][m], True) for k in keys if m != "bt"},
           "slope": report.interval(rob["slope"][m], True) if m != "bt" else None}
          for m in c.methods]
  paths = report.write_table(stem("robustness"), [("method", "method")] + [
      (f"a{k}", f"gold agreement @{k}") for k in keys] + [
      (f"d{k}", f"- BT @{k}") for k in keys] + [("slope", "slope of - BT over noise")], rows)
  srows = [{"noise": k, "variant": v, "agreement": report.interval(b["ensemble_agreement"]),
            **{n: report.interval(b[v][n]) for n in ("auroc", "precision", "recall") if n in b[v]},
            "random": b["random_baseline"], "negative": b[v]["fraction_negative"]}
           for k, b in summary["strength"].items() for v in ("out_of_fold", "in_sample")]
  paths += report.write_table(stem("strength"), [
      ("noise", "noise"), ("variant", "scoring"), ("agreement", "ensemble gold agreement"),
      ("auroc", "AUROC of −μ vs swapped"), ("precision", "precision @rate"),
      ("recall", "recall @rate"), ("random", "random baseline"),
      ("negative", "fraction μ<0")], srows)
  tables = ["robustness", "strength"]
  if "metarm" in summary:
    m = summary["metarm"]
    paths += report.write_table(stem("metarm"), [
        ("model", "model"), ("shifted", "gold agreement, shifted pairs"),
        ("held_out", "gold agreement, held-out pairs")], [
        {"model": name, "shifted": report.interval(m["shifted_accuracy"][name]),
         "held_out": report.interval(m["held_out_accuracy"][name])}
        for name in ("bt", "metarm")] + [
        {"model": "MetaRM - BT", "shifted": report.interval(m["metarm_minus_bt_shifted"], True),
         "held_out": report.interval(m["metarm_minus_bt_held_out"], True)}])
    tables.append("metarm")
  top = cells[0][c.noise_rates[-1]]["strength"]
  paths.append(plot_strength(stem("strength_vs_spread.png"), top))
  x = np.asarray(c.noise_rates, np.float64)
  band = lambda m, block: report.Series(m, x, *(np.array([block[k][b] for k in keys])
                                                for b in ("mean", "low", "high")))
  paths.append(report.plot_bands(stem("gold_vs_noise.png"), [[
      [band(m, rob["gold_agreement"][m]) for m in c.methods],
      [band(m, {k: rob["vs_bt"][k][m] for k in keys}) for m in c.methods if m != "bt"]]],
      ["held-out gold agreement", "minus BT (same seed and pairs)"], "label-noise rate",
      ["agreement"]))
  np.savez(stem("per_pair.npz"), **per_pair)
  paths.append(stem("per_pair.npz"))
  paths.append(report.write_json(stem("results.json"), {"config": c.to_dict(), **summary}))
  with open(stem("results.md"), "w") as f:
    f.write("\n".join(verdict_lines(summary)) + "\n")
    f.write(f"\n# Secrets of RLHF II on the synthetic task ({len(c.seeds)} seeds, mean "
            f"[95% interval], {summary['seconds']:.0f}s)\n")
    for name in tables:
      f.write(f"\n## {name}\n\n" + open(stem(f"{name}.md")).read())
    if summary.get("hh") is not None:
      f.write(f"\n## HH-RLHF harmless\n\n{summary['hh'].get('note', '')}\n")
  return paths + [stem("results.md")]


def hh_strength(c) -> dict | None:
  """The HH-RLHF part, or a note saying why it did not run."""
  if not c.hh:
    return None
  from experiments import secrets_hh
  from experiments.configs import secrets_hh as secrets_hh_config
  try:
    return secrets_hh.hh_strength(secrets_hh_config.get_config())
  except (FileNotFoundError, SystemExit) as error:
    return {"note": f"skipped: {error}"}


def checked(config) -> ml_collections.ConfigDict:
  """The config with ``scale`` applied, after checking the fields the analysis needs."""
  c = ml_collections.ConfigDict(config.to_dict())
  unknown = set(c.methods) - set(METHODS)
  if unknown:
    raise ValueError(f"methods: {sorted(unknown)} are not among {sorted(METHODS)}")
  if "bt" not in c.methods:
    raise ValueError("methods: must include 'bt' (the baseline of every comparison)")
  rates = list(c.noise_rates)
  if len(rates) < 2 or rates[0] != 0.0 or rates != sorted(set(rates)) or rates[-1] >= 1:
    raise ValueError(f"noise_rates: need 0.0 then increasing rates below 1, got {rates}")
  if c.metarm.enabled and c.metarm.noise not in rates:
    raise ValueError(f"metarm.noise={c.metarm.noise} must be one of noise_rates {rates}")
  if int(c.scale) != c.scale or c.scale < 1:
    raise ValueError(f"scale: must be a positive integer, got {c.scale}")
  s = int(c.scale)
  c.task.num_train_pairs *= s
  c.task.num_eval_pairs *= s
  c.rm.model.d_model *= s
  c.rm.model.d_ff *= s
  c.rm.train.steps *= s
  c.metarm.train_prompts *= s
  c.metarm.test_prompts *= s
  return c


def run(config) -> dict:
  start = time.time()
  c = checked(config)
  os.makedirs(c.workdir, exist_ok=True)
  boot = dict(num_resamples=c.bootstrap.resamples, seed=c.bootstrap.seed)
  eval_arrays = synthetic.make_split(synthetic.SyntheticConfig(**c.task.to_dict()), "eval")
  cells, metarm_runs = [], []
  for seed in c.seeds:
    cells.append({r: run_cell(c, seed, r, eval_arrays) for r in c.noise_rates})
    if c.metarm.enabled:
      workdir = os.path.join(c.workdir, f"seed{seed}", f"noise{noise_key(c.metarm.noise)}")
      metarm_runs.append(secrets_metarm.run(
          c, seed, workdir, os.path.join(workdir, "bt"),
          lambda d, flags, seed=seed: rm_config(c, d, seed, c.metarm.noise, flags), train,
          eval_arrays))
      m = metarm_runs[-1]
      print(f"seed {seed} MetaRM: shifted accuracy {m['metarm_shifted'].mean():.3f} vs BT "
            f"{m['bt_shifted'].mean():.3f}", flush=True)
  summary = {"noise_rates": list(c.noise_rates), "robustness": robustness(c, cells, boot),
             "strength": strength_summary(c, cells, boot)}
  if c.metarm.enabled:
    summary["metarm"] = secrets_metarm.summarise(
        c, metarm_runs, [seed[c.metarm.noise]["held_out"]["bt"] for seed in cells], boot)
  configs = {m: rm_config(c, "unused", 0, 0.0, method_flags(c, m, "unused"))
             for m in c.methods}
  summary["precondition"] = preconditions(c, summary)
  summary["controls"] = controls(c, cells, configs, boot)
  summary["verdicts"] = verdicts(c, summary)
  summary["cost"] = cost(c, cells, summary)
  summary["hh"] = hh_strength(c)
  summary["seconds"] = time.time() - start
  per_pair = {f"seed{s}/noise{noise_key(r)}/{m}": cell[r]["held_out"][m]
              for s, cell in zip(c.seeds, cells) for r in c.noise_rates for m in c.methods}
  per_pair.update({f"seed{s}/metarm/{k}": v for s, run in zip(c.seeds, metarm_runs)
                   for k, v in run.items() if isinstance(v, np.ndarray)})
  paths = write_outputs(c, summary, cells, per_pair)
  report.announce(paths, verdict_lines(summary), summary["seconds"])
  return summary


if __name__ == "__main__":
  cli.main(run)
