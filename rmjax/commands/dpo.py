"""``rmjax dpo``: direct preference optimisation of a policy on preference pairs
(``rmjax.rl.dpo``)."""

from __future__ import annotations

from rmjax.rl import dpo


def run(config) -> None:
  result = dpo.train(config)
  evaluation = result["eval"] or {}
  print("held-out: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(evaluation.items())))
  print(f"checkpoints, metrics.jsonl and TensorBoard logs are in {result['workdir']}")
