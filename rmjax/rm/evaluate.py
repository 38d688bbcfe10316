"""Held-out metrics of a reward model or ensemble over every eval pair."""

from __future__ import annotations

import numpy as np

from rmjax import parallel
from rmjax.data import schema
from rmjax.data.array_source import padded_batches
from rmjax.objectives import bt


def evaluate(eval_fn, params, arrays, batch_size: int, mesh) -> dict[str, float]:
  """Held-out metrics over every eval pair (algorithms.md §1).

  ``eval_fn`` gives [B, K] member rewards. The plain names ("accuracy", "margin", "ece",
  "length_correlation", "gold_agreement") score the members' mean reward (K = 1: the
  model); an ensemble adds each member's metrics as "name/m" and the average member's
  accuracy and gold agreement as "member_accuracy" and "member_gold_agreement". With
  Gaussian heads ("std_chosen"/"std_rejected" beside the means) the rewards are the
  predicted means, and "mean_std" (and "mean_std/m" per member) is the mean predicted std
  over both sides of every pair.
  """
  parts = []
  for batch, real in padded_batches(arrays, batch_size):
    out = parallel.sharding.to_host(eval_fn(params, parallel.shard_batch(batch, mesh)))
    parts.append({k: v[:real] for k, v in out.items()})
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  r_c, r_r = out["r_chosen"], out["r_rejected"]
  metrics = pair_metrics(r_c.mean(1), r_r.mean(1), arrays)
  k = r_c.shape[1]
  if k > 1:
    members = [pair_metrics(r_c[:, m], r_r[:, m], arrays) for m in range(k)]
    for m, member in enumerate(members):
      metrics.update({f"{name}/{m}": value for name, value in member.items()})
    for name in ("accuracy", "gold_agreement"):
      if name in metrics:
        metrics[f"member_{name}"] = float(np.mean([member[name] for member in members]))
  if "std_chosen" in out:
    stds = np.concatenate([out["std_chosen"], out["std_rejected"]])  # [2n, K]
    metrics["mean_std"] = float(stds.mean())
    if k > 1:
      metrics.update({f"mean_std/{m}": float(stds[:, m].mean()) for m in range(k)})
  return metrics


def pair_metrics(r_c: np.ndarray, r_r: np.ndarray, arrays) -> dict[str, float]:
  """Metrics of rewards r_c, r_r [n] of the pairs ``arrays``."""
  prompt_len = arrays.get("prompt_len", 0)
  lengths = [arrays[key].sum(1) - prompt_len for key in (schema.CHOSEN_MASK, schema.REJECTED_MASK)]
  metrics = {
      "accuracy": bt.pairwise_accuracy(r_c, r_r),
      "margin": bt.mean_margin(r_c, r_r),
      "ece": bt.expected_calibration_error(r_c - r_r),
      "length_correlation": bt.pearson_correlation(np.concatenate([r_c, r_r]),
                                                   np.concatenate(lengths)),
  }
  if schema.GOLD_CHOSEN in arrays:
    gold_c, gold_r = arrays[schema.GOLD_CHOSEN], arrays[schema.GOLD_REJECTED]
    metrics["gold_agreement"] = bt.gold_agreement(r_c, r_r, gold_c, gold_r)
  return {k: float(v) for k, v in metrics.items()}
