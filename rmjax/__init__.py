"""rmjax: reward models and RLHF in JAX."""

__version__ = "0.1.0"
