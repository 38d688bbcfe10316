"""Secrets of RLHF II on the synthetic task, with 25% known label noise.

  python experiments/secrets_rm.py --config=experiments/configs/secrets_rm.py

For every seed:
1. Strength. An ensemble of ``strength.members`` reward models is trained in folds
   (``train-rm --config.ensemble.folds``) and ``rmjax score-pairs`` measures every training
   pair's strength out of fold (and in sample, the paper's way). How well low strength
   finds the swapped labels: AUROC of −μ against "flipped", and the flipped share among the
   lowest ``strength.lowest`` of pairs; μ against σ is plotted.
2. Recipes. One reward model per method, each a ``train-rm`` run with that method's flags
   (the strength file of step 1 for flip / smoothing / margin; ``loss.contrastive`` for
   SimCSE / SwAV / goal-conditioned), judged by agreement with the gold reward on the clean
   held-out pairs.
3. MetaRM. The seed's BT model is the proxy. Base-policy responses ranked by the proxy give
   a shifted distribution: the proxy's top k responses to training prompts form MetaRM's
   meta set, and the proxy's top two responses to held-out prompts, labelled by the gold
   reward, are the shifted test pairs. BT and MetaRM (same data and steps, plus the meta
   step) are compared there and on the ordinary held-out pairs.
Then the HH-RLHF fraction of pairs with μ < 0 (``experiments/secrets_hh.py``), when the
shared data and the cached SmolLM2 features are there.

Writes results.md (all tables), strength/methods/metarm .md/.csv, results.json and
strength_vs_spread.png into the workdir, with mean and 95% t-interval over seeds.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli, report, stats  # noqa: E402
from rmjax.commands import score_pairs  # noqa: E402
from rmjax.configs import score_pairs as score_pairs_config  # noqa: E402
from rmjax.configs import train_rm  # noqa: E402
from rmjax.data import schema
from rmjax.rl import best_of_n
from rmjax.rm import load as load_rm
from rmjax.rm import strength
from rmjax.rm import trainer as rm_trainer
from rmjax.tasks import preference as synthetic

# Each method's train-rm flags; "{strength}" is the seed's strength file.
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


def rm_config(c, workdir: str, seed: int, flags: dict | None = None) -> ml_collections.ConfigDict:
  """``train-rm``'s defaults, ``c.rm`` and the task on top, then ``flags`` (dotted names)."""
  t = train_rm.get_config()
  for section, fields in c.rm.items():
    t[section].update(fields.to_dict())
  t.data.synthetic = ml_collections.ConfigDict(c.task.to_dict())
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


def train(config) -> dict:
  """A fresh ``train-rm`` run (any earlier run in its workdir is removed first)."""
  shutil.rmtree(config.train.workdir, ignore_errors=True)
  return rm_trainer.train(config)["eval"]


def measure_strength(c, seed: int, workdir: str) -> tuple[dict, dict]:
  """Trains the folded ensemble and scores the pairs: (metrics, arrays for the plot)."""
  run_dir = os.path.join(workdir, "ensemble")
  t = rm_config(c, run_dir, seed, {"ensemble.k": c.strength.members,
                                   "ensemble.folds": c.strength.folds})
  train(t)
  flipped = synthetic.make_split(synthetic.SyntheticConfig(**c.task.to_dict()),
                                 "train")[schema.FLIPPED]
  metrics, scored = {}, {}
  for variant, in_sample in (("out_of_fold", False), ("in_sample", True)):
    sc = score_pairs_config.get_config()
    sc.update(workdir=run_dir, in_sample=in_sample,
              output=os.path.join(workdir, f"strength_{variant}.npz"))
    out = score_pairs.run(sc)
    s = strength.load(out["output"])
    scored[variant] = s
    found = score_pairs.detection(s.mu, flipped, c.strength.lowest)
    metrics.update({f"{variant}/{k}": v for k, v in found.items()})
    metrics[f"{variant}/fraction_negative"] = float(np.mean(s.mu < 0))
  return metrics, {"strength": scored["out_of_fold"], "flipped": flipped}


def method_flags(c, method: str, strength_file: str) -> dict:
  flags = {}
  for name, value in METHODS[method].items():
    flags[name] = {"flip": c.flip_fraction, "smoothing": c.smoothing}.get(value, value)
  if any(name.startswith("data.strength") for name in flags):
    flags["data.strength.path"] = strength_file
  return flags


def ranked_samples(c, task, proxy, key, prompts: int):
  """Base-policy responses to ``prompts`` fresh prompts, sorted by the proxy, best first:
  dict of tokens/mask [P, N, T], gold [P, N] and the prompts' lengths [P]."""
  tokens, plen = task.sample_prompts(jax.random.fold_in(key, 0), prompts)
  prompt_mask = np.arange(tokens.shape[1])[None] < plen[:, None]

  @jax.jit
  def score(seq, mask, prompt_len):
    gold = task.gold_reward(seq, mask, prompt_len)["total"]
    return {"tokens": seq, "mask": mask, "gold": gold, "proxy": proxy(seq, mask)[:, 0]}

  out = best_of_n.best_of_n_scores(jax.random.fold_in(key, 1), task.policy, task.sampling,
                                   tokens, prompt_mask, c.metarm.num_samples, score,
                                   chunk_size=c.metarm.chunk_size)
  order = np.argsort(-out["proxy"], axis=1, kind="stable")
  take = lambda x: np.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), 1)
  return {k: take(v) for k, v in out.items()}


def shifted_accuracy(scorer, pairs: dict) -> float:
  """How often ``scorer`` orders the shifted test pairs as the gold reward does."""
  p, _, t = pairs["tokens"].shape
  rewards = np.asarray(scorer(jnp.asarray(pairs["tokens"].reshape(2 * p, t)),
                              jnp.asarray(pairs["mask"].reshape(2 * p, t))))[:, 0]
  rewards = rewards.reshape(p, 2)
  gold = pairs["gold"]
  keep = gold[:, 0] != gold[:, 1]
  agree = (rewards[:, 0] - rewards[:, 1]) * (gold[:, 0] - gold[:, 1]) > 0
  return float(agree[keep].mean())


def run_metarm(c, seed: int, workdir: str) -> dict:
  """BT (the seed's "bt" run) vs MetaRM on the shifted test pairs and the held-out pairs."""
  task = synthetic.build_task(synthetic.SyntheticConfig(**c.task.to_dict()))
  proxy, _ = load_rm.load_ensemble(os.path.join(workdir, "bt"))
  key = jax.random.fold_in(jax.random.key(seed), c.metarm.prompt_key)
  meta = ranked_samples(c, task, proxy, jax.random.fold_in(key, 0), c.metarm.train_prompts)
  meta_file = os.path.join(workdir, "meta_set.npz")
  np.savez(meta_file, tokens=meta["tokens"][:, :c.metarm.k], mask=meta["mask"][:, :c.metarm.k])
  test = ranked_samples(c, task, proxy, jax.random.fold_in(key, 1), c.metarm.test_prompts)
  test = {k: v[:, :2] for k, v in test.items()}
  meta_dir = os.path.join(workdir, "metarm")
  evaluation = train(rm_config(c, meta_dir, seed, {
      "metarm.enabled": True, "metarm.responses": meta_file, "metarm.k": c.metarm.k,
      "metarm.eta": c.metarm.eta, "metarm.first_order": c.metarm.first_order,
      "metarm.prompts_per_step": c.metarm.prompts_per_step}))
  metarm, _ = load_rm.load_ensemble(meta_dir)
  return {"bt/shifted_accuracy": shifted_accuracy(proxy, test),
          "metarm/shifted_accuracy": shifted_accuracy(metarm, test),
          "metarm/gold_agreement": evaluation["gold_agreement"],
          "metarm/accuracy": evaluation["accuracy"],
          "shifted_pairs": int(len(test["gold"]))}


def run_seed(c, seed: int) -> tuple[dict, dict]:
  workdir = os.path.join(c.workdir, f"seed{seed}")
  start = time.time()
  out, plot = measure_strength(c, seed, workdir)
  print(f"seed {seed}: strength measured in {time.time() - start:.0f}s: out-of-fold AUROC "
        f"{out['out_of_fold/auroc']:.3f}, in-sample {out['in_sample/auroc']:.3f}", flush=True)
  strength_file = os.path.join(workdir, "strength_out_of_fold.npz")
  for method in c.methods:
    start = time.time()
    ev = train(rm_config(c, os.path.join(workdir, method), seed,
                         method_flags(c, method, strength_file)))
    out[f"{method}/gold_agreement"], out[f"{method}/accuracy"] = (ev["gold_agreement"],
                                                                  ev["accuracy"])
    print(f"seed {seed} {method}: gold agreement {ev['gold_agreement']:.3f} "
          f"({time.time() - start:.0f}s)", flush=True)
  if c.metarm.enabled:
    start = time.time()
    out.update(run_metarm(c, seed, workdir))
    print(f"seed {seed} MetaRM: shifted accuracy {out['metarm/shifted_accuracy']:.3f} vs BT "
          f"{out['bt/shifted_accuracy']:.3f} ({time.time() - start:.0f}s)", flush=True)
  return out, plot


def interval(values) -> dict:
  mean, low, high = stats.t_interval(np.asarray(values, np.float64))
  return {"mean": float(mean), "low": float(low), "high": float(high)}


def summarise(per_seed: list[dict]) -> dict:
  """Mean and 95% t-interval over seeds of every measured number."""
  names = [k for k, v in per_seed[0].items() if isinstance(v, float)]
  return {name: interval([s[name] for s in per_seed]) for name in names}


def fmt(s: dict) -> str:
  return f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"


def plot_strength(path: str, plot: dict) -> str:
  """μ against σ of every training pair (one seed), flipped pairs in red."""
  s, flipped = plot["strength"], plot["flipped"]
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for mask, colour, label in ((~flipped, "C0", "label kept"), (flipped, "C3", "label swapped")):
    ax.scatter(s.mu[mask], s.sigma[mask], s=5, alpha=0.5, color=colour, label=label)
  ax.axvline(0, color="k", lw=0.7)
  ax.set_xlabel("strength μ (mean Δ over out-of-fold members)")
  ax.set_ylabel("spread σ")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write_outputs(c, summary: dict, per_seed: list[dict], plot: dict, hh: dict | None,
                  seconds: float) -> list[str]:
  w = c.workdir
  lowest = f"precision_lowest_{round(c.strength.lowest * 100)}pct"
  strength_rows = [{"scoring": v, **{k: fmt(summary[f"{v}/{k}"]) for k in
                                     ("auroc", lowest, "fraction_negative")}}
                   for v in ("out_of_fold", "in_sample")]
  method_rows = [{"method": m, "gold_agreement": fmt(summary[f"{m}/gold_agreement"]),
                  "accuracy": fmt(summary[f"{m}/accuracy"])} for m in c.methods]
  paths = report.write_table(os.path.join(w, "strength"), [
      ("scoring", "scoring"), ("auroc", "AUROC of −μ vs swapped"),
      (lowest, f"swapped share in lowest {c.strength.lowest:.0%}"),
      ("fraction_negative", "fraction μ<0")], strength_rows)
  paths += report.write_table(os.path.join(w, "methods"), [
      ("method", "method"), ("gold_agreement", "gold agreement (held-out, clean)"),
      ("accuracy", "accuracy vs held-out labels")], method_rows)
  tables = ["strength", "methods"]
  if c.metarm.enabled:
    metarm_rows = [{"model": "BT", "shifted": fmt(summary["bt/shifted_accuracy"]),
                    "held_out": fmt(summary["bt/gold_agreement"])},
                   {"model": "MetaRM", "shifted": fmt(summary["metarm/shifted_accuracy"]),
                    "held_out": fmt(summary["metarm/gold_agreement"])}]
    paths += report.write_table(os.path.join(w, "metarm"), [
        ("model", "model"), ("shifted", "gold agreement, shifted pairs"),
        ("held_out", "gold agreement, held-out pairs")], metarm_rows)
    tables.append("metarm")
  paths.append(plot_strength(os.path.join(w, "strength_vs_spread.png"), plot))
  paths.append(report.write_json(os.path.join(w, "results.json"), {
      "config": c.to_dict(), "summary": summary, "per_seed": per_seed, "hh": hh,
      "seconds": seconds}))
  with open(os.path.join(w, "results.md"), "w") as f:
    f.write(f"# Secrets of RLHF II on the synthetic task ({len(c.seeds)} seeds, "
            f"mean [95% t-interval], {seconds:.0f}s)\n")
    for name in tables:
      f.write(f"\n## {name}\n\n" + open(os.path.join(w, f"{name}.md")).read())
    if hh is not None:
      f.write(f"\n## HH-RLHF harmless\n\n{hh.get('note', '')}\n")
  return paths + [os.path.join(w, "results.md")]


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


def run(config) -> dict:
  start = time.time()
  c = ml_collections.ConfigDict(config.to_dict())
  unknown = set(c.methods) - set(METHODS)
  if unknown:
    raise ValueError(f"methods {sorted(unknown)} are not among {sorted(METHODS)}")
  if c.metarm.enabled and "bt" not in c.methods:
    raise ValueError("the MetaRM part compares against the 'bt' method; keep it in methods")
  os.makedirs(c.workdir, exist_ok=True)
  per_seed, plot = [], None
  for seed in c.seeds:
    out, seed_plot = run_seed(c, seed)
    per_seed.append(out)
    plot = plot or seed_plot
  summary = summarise(per_seed)
  hh = hh_strength(c)
  seconds = time.time() - start
  for path in write_outputs(c, summary, per_seed, plot, hh, seconds):
    print("wrote", path)
  print(open(os.path.join(c.workdir, "results.md")).read())
  return {"summary": summary, "per_seed": per_seed, "hh": hh}


if __name__ == "__main__":
  cli.main(run)
