"""Training loops, checkpointing and resume."""
