"""Draw docs/synthetic_task.png: where the synthetic task's gold reward turns.

  python scripts/plot_synthetic_task.py [--seed 0] [--samples 8192] [--out docs/synthetic_task.png]

For each feature gold turns on (response length, marker count), the mean gold total of
base-policy samples at each feature value (with its 95% normal interval) over the share of
samples at that value, for version 2 (the default) and, for length, version 1; the
measured turns are marked. Prints the numbers it plots.
"""

from __future__ import annotations

import argparse

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rmjax.tasks import preference as synthetic  # noqa: E402


def base_samples(task, seed: int, n: int):
  """(features, gold total) of n fresh base-policy samples (a stream no split uses)."""
  keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 3000))
  prompts, plen = task.sample_prompts(keys[0], n)
  tokens, mask = task.sample_responses(keys[1], prompts, plen)
  return task.features(tokens, mask, plen), task.score(tokens, mask, plen)["total"]


def conditional(feature, gold):
  """Per value of an integer feature: (values, share, mean gold, 95% half-width)."""
  values, counts = np.unique(feature, return_counts=True)
  means = np.array([gold[feature == v].mean() for v in values])
  half = np.array([1.96 * gold[feature == v].std() / np.sqrt(c) for v, c in zip(values, counts)])
  return values, counts / len(feature), means, half


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--samples", type=int, default=8192)
  parser.add_argument("--out", default="docs/synthetic_task.png")
  args = parser.parse_args()
  panels = [(2, "length"), (2, "markers"), (1, "length")]
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
  for ax, (version, name) in zip(axes, panels):
    task = synthetic.build_task(synthetic.SyntheticConfig(seed=args.seed, version=version))
    feats, gold = base_samples(task, args.seed, args.samples)
    values, share, means, half = conditional(feats[name], gold)
    keep = share * len(gold) >= 10
    turn = task.turns[name]
    print(f"version {version} {name}: turn at {turn['argmax']} (percentile "
          f"{turn['percentile']:.3f}); share past it {np.mean(feats[name] > turn['argmax']):.3f}")
    for v, s, m in zip(values[keep], share[keep], means[keep]):
      print(f"  {name}={v}: share {s:.3f} mean gold {m:+.2f}")
    twin = ax.twinx()
    twin.bar(values, share, color="0.85", width=0.8)
    twin.set_ylabel("share of base samples")
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.errorbar(values[keep], means[keep], yerr=half[keep], fmt="o-", color="C0", ms=3)
    ax.axvline(turn["argmax"], color="C3", ls="--",
               label=f"measured turn (pct {turn['percentile']:.2f})")
    ax.set_xlabel(f"response {name}" if name == "length" else "marker tokens in the response")
    ax.set_ylabel("mean gold total")
    ax.set_title(f"version {version}: E[gold | {name}]")
    ax.legend(fontsize=8, loc="lower left")
  fig.tight_layout()
  fig.savefig(args.out, dpi=100)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
