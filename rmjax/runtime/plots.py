"""Training-curve plots (PNG, matplotlib) from a run's metrics.jsonl."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rmjax.runtime.metrics import read_metrics  # noqa: E402


def plot_training_curves(metrics_path: str, out_path: str,
                         panels=(("loss",), ("accuracy", "gold_agreement"))) -> str:
  """One panel per group of metric names; train and eval series on each."""
  rows = read_metrics(metrics_path)
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5))
  for ax, names in zip(axes, panels):
    for split, style in (("train", "-"), ("eval", "o-")):
      for name in names:
        points = [(r["step"], r[name]) for r in rows if r["split"] == split and name in r]
        if points:
          steps, values = zip(*points)
          ax.plot(steps, values, style, label=f"{split} {name}", markersize=3)
    ax.set_xlabel("step")
    ax.set_title(" / ".join(names))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path
