"""RL math as pure functions of arrays (best-of-n), plus the best-of-n sampling harness."""
