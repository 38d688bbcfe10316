"""``rmjax train-rm``: train a Bradley–Terry reward model (``rmjax.train.rm_trainer``)."""

from __future__ import annotations

from rmjax.train import rm_trainer


def run(config) -> None:
  result = rm_trainer.train(config)
  metrics = result["eval"]
  print("held-out: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
  print(f"checkpoints, metrics.jsonl, TensorBoard logs and {result['plot']} are in "
        f"{result['workdir']}")
