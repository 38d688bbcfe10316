"""Synthetic tasks with a known gold reward (policy, gold, label noise)."""
