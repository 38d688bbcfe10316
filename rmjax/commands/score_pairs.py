"""``rmjax score-pairs``: preference strength of a dataset's pairs from a trained ensemble.

Scores every training pair of the run in ``config.workdir`` (its own data config, split
order) with every member: Δ_m = r_m(chosen) − r_m(rejected). A run trained with
``ensemble.folds`` gives each pair the mean μ and spread σ of the members that never saw it
(out of fold; ``rmjax.objectives.preference_strength.out_of_fold_strength``); otherwise, or
with ``in_sample``, of all members, as the paper does. Writes the strength file
(``rmjax.rm.strength``) that ``train-rm --config.data.strength.path=...`` reads, and
prints how many pairs look mislabelled (μ < 0) and, for data with known injected noise,
how well low strength finds the flipped labels.
"""

from __future__ import annotations

import os

import numpy as np

from rmjax import parallel
from rmjax.commands.score import score_in_batches
from rmjax.data import schema
from rmjax.objectives import preference_strength as ps
from rmjax.parallel.sharding import data_parallel_size
from rmjax.rm import batches as rm_batches
from rmjax.rm import strength
from rmjax.rm.load import load_ensemble


def member_deltas(scorer, arrays: dict, batch_size: int, mesh) -> np.ndarray:
  """float32 [N, K]: every member's Δ for the pairs ``arrays`` (schema keys)."""
  score = lambda side: score_in_batches(scorer, arrays[f"{side}_tokens"],
                                        arrays[f"{side}_mask"], batch_size, mesh)
  return score("chosen") - score("rejected")


def detection(mu: np.ndarray, flipped: np.ndarray, lowest: float = 0.2) -> dict[str, float]:
  """How well low strength finds the flipped pairs: AUROC of −μ, and the flipped share
  (precision) among the ``lowest`` fraction of pairs by μ."""
  low = np.asarray(ps.flip_lowest(mu, lowest))
  return {"auroc": ps.auroc(-mu, flipped), f"precision_lowest_{round(lowest * 100)}pct":
          float(flipped[low].mean())}


def run(config) -> dict:
  mesh = parallel.make_mesh(parallel.MeshConfig(**config.mesh))
  scorer, run_config = load_ensemble(config.workdir, mesh)
  if scorer.k < 2:
    raise ValueError(f"{config.workdir} holds a single reward model; preference strength "
                     "needs an ensemble (train-rm --config.ensemble.k=M)")
  dp = data_parallel_size(mesh)
  batch_size = -(-config.batch_size // dp) * dp
  data = rm_batches.load(run_config.data, batch_size, run_config.seed)
  arrays = rm_batches.train_pairs(run_config.data)
  deltas = member_deltas(scorer, arrays, batch_size, mesh)
  scored = strength.Strength.from_deltas(deltas, scorer.layout.folds, run_config.seed,
                                         data.data_hash, config.in_sample)
  output = config.output or os.path.join(config.workdir, strength.FILE_NAME)
  strength.save(output, scored)
  summary = {"pairs": len(scored.mu), "members": scorer.k, "method": scored.method,
             "fraction_negative": float(np.mean(scored.mu < 0)),
             "mean_sigma": float(np.mean(scored.sigma))}
  flipped = arrays.get(schema.FLIPPED)
  if flipped is not None and 0 < flipped.sum() < len(flipped):
    summary.update(detection(scored.mu, flipped.astype(bool)))
  print(f"scored {summary['pairs']} pairs with {scorer.k} members ({scored.method}): "
        + "  ".join(f"{k} {v:.4f}" for k, v in summary.items() if isinstance(v, float)))
  print(f"wrote {output}")
  return {"output": output, **summary}
