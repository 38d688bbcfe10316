"""Reward-model objectives and metrics: pure functions of reward arrays (no Flax, no config)."""
