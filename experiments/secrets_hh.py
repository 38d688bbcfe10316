"""Preference strength on HH-RLHF harmless (Secrets of RLHF II, §2), from cached features.

  python experiments/secrets_hh.py --config=experiments/configs/secrets_hh.py

The paper trains M = 10 reward models on the same pairs and calls a pair's mean margin
μ_i = mean_m Δ_m(i) its preference strength (σ_i the members' population std); about 25%
of HH-RLHF pairs had μ < 0. Here the members are linear probes (n = 0: final norm and a
fresh reward head) on SmolLM2-135M's last-token states, the features ``hh_rlhf_rm``
caches (``feature_cache.build`` finds its entries), trained in two variants:
  * in-sample, the paper's: every member trains on every train pair;
  * out-of-fold: the pairs are dealt into F folds by a seeded permutation and member m
    trains without fold m % F, so pair i's μ averages the M / F members that never saw it
    (``preference_strength.out_of_fold_strength``).
Every repetition (``config.seeds``) redraws the folds and the members' seeds (head init
and batch order); member m of a repetition has the same seed in both variants.
Writes into the workdir: results.md/.csv/.json (mean and 95% t-interval over
repetitions), strengths.csv (every pair's μ and σ), mu_hist.png and mu_sigma.png.
"""

from __future__ import annotations

import csv
import os
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import logging as absl_logging
from flax import nnx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli, hh_rlhf_rm, report, stats  # noqa: E402
from rmjax import parallel  # noqa: E402
from rmjax.data import schema, tokenize  # noqa: E402
from rmjax.data.array_source import padded_batches  # noqa: E402
from rmjax.objectives import bt, preference_strength  # noqa: E402
from rmjax.rm import feature_cache, strength
from rmjax.rm import feature_trainer as feature_train
from rmjax.rm.build import build_model  # noqa: E402
from rmjax.rm.load import single_device_mesh  # noqa: E402

OUT_OF_FOLD, IN_SAMPLE = "out-of-fold", "in-sample"
VARIANTS = (OUT_OF_FOLD, IN_SAMPLE)
FRACTION_NEGATIVE = "fraction μ<0"


def fold_plan(pairs: int, folds: int, members: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(pair_fold [pairs], member_fold [members]) of the out-of-fold variant.

  The folds of ``train-rm --config.ensemble.folds`` (``rmjax.rm.strength``): a seeded
  partition into near-equal folds, member m trained without fold m % folds, so every
  pair is scored by exactly members / folds members.
  """
  if folds < 2:
    raise ValueError(f"strength.folds={folds}: out-of-fold scoring needs at least 2 folds")
  if members % folds:
    raise ValueError(f"strength.members={members} is not a multiple of strength.folds="
                     f"{folds}: pairs would be scored by unequal numbers of members")
  if pairs < folds:
    raise ValueError(f"{pairs} pair(s) cannot fill strength.folds={folds} folds")
  return strength.pair_folds(pairs, folds, seed), strength.member_folds(members, folds)


def member_seed(base: int, member: int, members: int) -> int:
  """Seed of member ``member`` in the repetition with base seed ``base``: distinct for
  every (base, member) with 0 <= member < members."""
  return base * members + member


def pair_deltas(eval_fn, params, arrays: dict, batch_size: int, mesh) -> np.ndarray:
  """Δ = r(chosen) − r(rejected) [pairs] of one trained model on ``arrays``' pairs."""
  parts = []
  for batch, real in padded_batches(arrays, batch_size):
    out = eval_fn(params, parallel.shard_batch(batch, mesh))
    parts.append(np.asarray(out["r_chosen"] - out["r_rejected"], np.float32)[:real, 0])
  return np.concatenate(parts)


def train_member(run, model, rows: np.ndarray, train: dict, heldout: dict, workdir: str,
                 mesh) -> dict:
  """Trains ``model``'s final norm and head on the train pairs ``rows`` [k] (``run``:
  hh_rlhf_rm's n = 0 run config with the member's seed). Returns Δ of every train pair
  ("train" [N]) and held-out pair ("heldout" [H]), and the training time."""
  subset = {k: v[rows] for k, v in train.items()}
  out = feature_train.train_top(model, model.cfg.n_layers, subset, heldout, run, workdir, mesh)
  size = run.train.batch_size
  return {"train": pair_deltas(out["eval_fn"], out["params"], train, size, mesh),
          "heldout": pair_deltas(out["eval_fn"], out["params"], heldout, size, mesh),
          "seconds": out["train_seconds"]}


def accuracy(deltas: np.ndarray) -> float:
  """Pairwise accuracy of margins Δ [pairs] (ties count ½)."""
  return float(bt.pairwise_accuracy(deltas, np.zeros_like(deltas)))


def variant_metrics(mu: np.ndarray, sigma: np.ndarray, heldout: np.ndarray) -> dict:
  """Scalars of one variant: mu, sigma [N] of the train pairs, heldout [H, M] member Δ."""
  order = np.argsort(mu, kind="stable")
  decile = max(1, len(mu) // 10)
  return {FRACTION_NEGATIVE: float(np.mean(mu < 0)),
          "mean μ": float(mu.mean()), "mean σ": float(sigma.mean()),
          "mean σ, lowest-μ decile": float(sigma[order[:decile]].mean()),
          "mean σ, highest-μ decile": float(sigma[order[-decile:]].mean()),
          "held-out accuracy, members' mean": accuracy(heldout.mean(1)),
          "held-out accuracy, average member": float(np.mean(
              [accuracy(heldout[:, m]) for m in range(heldout.shape[1])]))}


def repetition(config, base: int, make_model, train: dict, heldout: dict, mesh) -> dict:
  """Both variants' M members for base seed ``base`` and every train pair's strengths.

  make_model(seed) -> ``Transformer`` with a reward head initialised from ``seed``;
  train, heldout: ``feature_train.pair_arrays`` dicts of N and H pairs (n = 0 features).
  Returns pair_fold [N], member_fold [M], and per variant: deltas [N, M],
  heldout [H, M], mu and sigma [N], metrics (scalars).
  """
  members, pairs = config.strength.members, len(train[schema.MARGIN])
  pair_fold, member_fold = fold_plan(pairs, config.strength.folds, members, base)
  rows = {IN_SAMPLE: lambda m: np.arange(pairs),
          OUT_OF_FOLD: lambda m: np.flatnonzero(pair_fold != member_fold[m])}
  runs = {v: [] for v in VARIANTS}
  for m in range(members):
    run = hh_rlhf_rm.override(config, 0)
    run.seed = member_seed(base, m, members)
    graphdef, state = nnx.split(make_model(run.seed))
    for variant in VARIANTS:
      workdir = os.path.join(config.workdir, f"rep{base}", variant, f"m{m}")
      # Training donates the state's buffers: each variant starts from its own copy.
      model = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))
      out = train_member(run, model, rows[variant](m), train, heldout, workdir, mesh)
      runs[variant].append(out)
      print(f"rep {base} {variant} member {m} (seed {run.seed}): held-out accuracy "
            f"{accuracy(out['heldout']):.4f} ({out['seconds']:.0f}s)", flush=True)
  result = {"base_seed": base, "pair_fold": pair_fold, "member_fold": member_fold}
  for variant in VARIANTS:
    deltas = np.stack([r["train"] for r in runs[variant]], axis=1)
    if variant == OUT_OF_FOLD:
      mu, sigma = preference_strength.out_of_fold_strength(deltas, member_fold, pair_fold)
    else:
      mu, sigma = preference_strength.preference_strength(deltas)
    mu, sigma = np.asarray(mu), np.asarray(sigma)
    held = np.stack([r["heldout"] for r in runs[variant]], axis=1)
    result[variant] = {"deltas": deltas, "heldout": held, "mu": mu, "sigma": sigma,
                       "metrics": variant_metrics(mu, sigma, held),
                       "train_seconds": float(sum(r["seconds"] for r in runs[variant]))}
  result["mu_correlation"] = float(np.corrcoef(result[OUT_OF_FOLD]["mu"],
                                               result[IN_SAMPLE]["mu"])[0, 1])
  return result


def summarize(reps: list[dict]) -> list[dict]:
  """One row per (variant, metric): mean and 95% t-interval over repetitions."""
  metrics = [(v, name, [r[v]["metrics"][name] for r in reps])
             for v in VARIANTS for name in reps[0][v]["metrics"]]
  metrics.append(("both", "Pearson r of the two μ", [r["mu_correlation"] for r in reps]))
  rows = []
  for variant, name, values in metrics:
    mean, low, high = (float(x) for x in stats.t_interval(values))
    rows.append({"variant": variant, "metric": name, "mean": mean, "low": low, "high": high,
                 "ci95": (high - mean) if len(values) > 1 else None,  # one rep: no interval
                 "reps": len(values), "values": [float(x) for x in values],
                 "per_rep": " ".join(f"{x:.4f}" for x in values)})
  return rows


COLUMNS = [("variant", "variant"), ("metric", "metric"), ("mean", "mean"), ("ci95", "±95%"),
           ("reps", "reps"), ("per_rep", "per repetition")]


def write_strengths(path: str, reps: list[dict]) -> str:
  """Every train pair's fold, μ and σ under both variants, one row per (rep, pair)."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["base_seed", "pair", "fold", "mu_out_of_fold", "sigma_out_of_fold",
                     "mu_in_sample", "sigma_in_sample"])
    for r in reps:
      oof, ins = r[OUT_OF_FOLD], r[IN_SAMPLE]
      for i, fold in enumerate(r["pair_fold"]):
        writer.writerow([r["base_seed"], i, int(fold), repr(float(oof["mu"][i])),
                         repr(float(oof["sigma"][i])), repr(float(ins["mu"][i])),
                         repr(float(ins["sigma"][i]))])
  return path


def plot_strengths(reps: list[dict], workdir: str) -> list[str]:
  """mu_hist.png (μ of both variants, all repetitions pooled) and mu_sigma.png (σ
  against μ, one panel per variant)."""
  pooled = {v: (np.concatenate([r[v]["mu"] for r in reps]),
                np.concatenate([r[v]["sigma"] for r in reps])) for v in VARIANTS}
  fig, ax = plt.subplots(figsize=(6, 3.8))
  bins = np.histogram_bin_edges(np.concatenate([mu for mu, _ in pooled.values()]), 60)
  for variant, (mu, _) in pooled.items():
    ax.hist(mu, bins, alpha=0.5, label=f"{variant}: {np.mean(mu < 0):.1%} with μ<0")
  ax.axvline(0, color="k", lw=0.8)
  ax.set(xlabel="preference strength μ (mean margin over members)", ylabel="pairs",
         title=f"HH-RLHF harmless, {len(reps)} repetition(s) pooled")
  ax.legend(fontsize=8)
  fig.tight_layout()
  hist = os.path.join(workdir, "mu_hist.png")
  fig.savefig(hist, dpi=110)
  plt.close(fig)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
  for ax, (variant, (mu, sigma)) in zip(axes[0], pooled.items()):
    ax.scatter(mu, sigma, s=3, alpha=0.3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="μ", ylabel="σ (population std over members)", title=variant)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  scatter = os.path.join(workdir, "mu_sigma.png")
  fig.savefig(scatter, dpi=110)
  plt.close(fig)
  return [hist, scatter]


def per_rep_summary(reps: list[dict]) -> list[dict]:
  """The repetitions without their per-pair arrays: metrics, members' held-out accuracy."""
  return [{"base_seed": r["base_seed"], "mu_correlation": r["mu_correlation"],
           **{v: {"metrics": r[v]["metrics"], "train_seconds": r[v]["train_seconds"],
                  "member_heldout_accuracy": [accuracy(h) for h in r[v]["heldout"].T]}
              for v in VARIANTS}} for r in reps]


def write_outputs(workdir: str, reps: list[dict], payload: dict) -> tuple[list[dict], list[str]]:
  """results.md/.csv/.json and strengths.csv of the repetitions so far."""
  rows = summarize(reps)
  stem = os.path.join(workdir, "results")
  paths = report.write_table(stem, COLUMNS, rows)
  paths.append(report.write_json(f"{stem}.json", {**payload, "reps": per_rep_summary(reps),
                                                  "summary": rows}))
  paths.append(write_strengths(os.path.join(workdir, "strengths.csv"), reps))
  return rows, paths


def load_features(config, mesh) -> tuple[dict, dict, object, dict]:
  """(train, heldout ``pair_arrays``, make_model(seed), set notes) on n = 0 features,
  computed only where ``config.cache.dir`` lacks them."""
  hh_rlhf_rm.resolve_paths(config)
  tokenizer = tokenize.load_tokenizer(config.data.files.tokenizer)
  sets, notes = hh_rlhf_rm.load_sets(config, tokenizer)
  make_model = lambda seed: build_model(config.model, len(tokenizer), seed, mesh)
  entries = feature_cache.build(make_model(0), sets, (0,), config.cache.dir,
                                dtype=config.cache.dtype, batch_size=config.cache.batch_size)
  return (feature_train.pair_arrays(entries["train", 0]),
          feature_train.pair_arrays(entries[hh_rlhf_rm.HELD_OUT, 0]), make_model, notes)


def hh_strength(config) -> dict:
  """The whole experiment. Returns JSON-ready results: rows (``summarize``),
  fraction_negative (variant -> mean, low, high, values over repetitions), reps
  (``per_rep_summary``; the per-pair μ and σ are in strengths.csv), paths written, the
  sets' notes and a Markdown note (the table) for a caller's report."""
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax/absl chatter at INFO
  os.makedirs(config.workdir, exist_ok=True)
  mesh = single_device_mesh()
  train, heldout, make_model, notes = load_features(config, mesh)
  payload = {"config": config.to_dict(), "sets": notes}
  reps, t0 = [], time.perf_counter()
  for base in config.seeds:
    reps.append(repetition(config, base, make_model, train, heldout, mesh))
    rows, paths = write_outputs(config.workdir, reps, payload)  # a partial run leaves a table
  paths += plot_strengths(reps, config.workdir)
  fraction = {r["variant"]: {k: r[k] for k in ("mean", "low", "high", "values")}
              for r in rows if r["metric"] == FRACTION_NEGATIVE}
  with open(paths[0], encoding="utf-8") as f:
    note = (f"Preference strength of {notes['train']['pairs']} train pairs, M="
            f"{config.strength.members} linear probes per variant, F={config.strength.folds} "
            f"folds, mean and 95% t-interval over {len(reps)} repetition(s) "
            f"(paper: about 25% of pairs with μ<0).\n\n{f.read()}")
  print(note)
  print(f"{len(reps)} repetition(s) in {time.perf_counter() - t0:.0f}s; wrote {', '.join(paths)}")
  return {"rows": rows, "fraction_negative": fraction, "reps": per_rep_summary(reps),
          "paths": paths, "sets": notes, "note": note}


if __name__ == "__main__":
  cli.main(hh_strength)
