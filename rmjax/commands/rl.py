"""``rmjax rl``: PPO of a policy (the synthetic task's, or ``policy.init_from`` on
``prompts.path``) against trained reward models (``rmjax.rl.trainer``)."""

from __future__ import annotations

from rmjax.rl import trainer as ppo_trainer


def run(config) -> None:
  result = ppo_trainer.train(config)
  metrics = result["metrics"]
  print("last iteration: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
  print(f"checkpoints, metrics.jsonl and TensorBoard logs are in {result['workdir']}")
