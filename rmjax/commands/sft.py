"""``rmjax sft``: supervised fine-tuning of a policy on prompt + response rows, or on the
best of n of its own samples (``rmjax.rl.sft``)."""

from __future__ import annotations

from rmjax.rl import sft


def run(config) -> None:
  result = sft.train(config)
  evaluation = result["eval"] or {}
  print("held-out: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(evaluation.items())))
  print(f"checkpoints, metrics.jsonl and TensorBoard logs are in {result['workdir']}")
