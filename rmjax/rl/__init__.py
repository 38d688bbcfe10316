"""Policy optimisation against reward sources: rollout, reward scoring, the PPO step and
trainer, best-of-n sampling."""
