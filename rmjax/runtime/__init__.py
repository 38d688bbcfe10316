"""The one training loop, checkpoints, metrics, optimizers and plots that every program uses."""
