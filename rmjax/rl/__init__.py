"""RL math as pure functions of arrays (best-of-n, PPO, KL control, running reward
statistics), plus the best-of-n sampling harness."""
