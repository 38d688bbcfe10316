"""``rmjax dpo``: direct preference optimisation of a policy on preference pairs
(``rmjax.rl.dpo``), or on its own labelled samples round by round (``rmjax.rl.online_dpo``)."""

from __future__ import annotations

from rmjax.rl import dpo, online_dpo


def run(config) -> None:
  if config.dpo.online.rounds:
    result = online_dpo.train(config)
    print("last round: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(result["metrics"].items())))
  else:
    result = dpo.train(config)
    evaluation = result["eval"] or {}
    print("held-out: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(evaluation.items())))
  print(f"checkpoints, metrics.jsonl and TensorBoard logs are in {result['workdir']}")
