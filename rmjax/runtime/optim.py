"""The optimizer every trainer uses: AdamW, linear warmup then cosine decay, global
gradient clipping, and optional gradient accumulation (``optax.MultiSteps``)."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int,
                           final_fraction: float = 0.1) -> optax.Schedule:
  """Linear warmup from 0 to ``peak``, then cosine decay to ``final_fraction * peak``."""
  warmup_steps = max(0, min(warmup_steps, total_steps))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=final_fraction * peak)


def make_optimizer(cfg, total_steps: int, trainable=None) -> optax.GradientTransformation:
  """``cfg``: learning_rate, warmup_steps, weight_decay, b1, b2, clip_norm, grad_accum.

  ``total_steps`` counts optimizer updates; with ``grad_accum = k`` each update
  averages the gradients of k consecutive micro-batches.

  ``trainable``: None (every parameter trains), or a pytree of bools matching the params
  (or a function of the params giving one), e.g. ``rmjax.models.lora.trainable_mask``.
  Then only the True leaves are clipped, accumulated and updated, and only they have
  optimizer state; the others get zero updates (a frozen LoRA base), so their gradients
  are never used and XLA need not compute them.
  """
  if cfg.grad_accum < 1:
    raise ValueError(f"optim.grad_accum={cfg.grad_accum} must be >= 1")
  if cfg.learning_rate <= 0:
    raise ValueError(f"optim.learning_rate={cfg.learning_rate} must be > 0")
  schedule = learning_rate_schedule(cfg.learning_rate, cfg.warmup_steps, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
  if cfg.grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum)
  if trainable is None:
    return tx
  labels = ((lambda params: _labels(trainable(params))) if callable(trainable)
            else _labels(trainable))
  return optax.partition({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _labels(mask):
  return jax.tree.map(lambda m: "train" if m else "frozen", mask)
