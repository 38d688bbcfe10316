"""LoRA: low-rank adapters on a frozen backbone, for reward models and PPO on large models.

With ``ModelConfig.lora_rank = r > 0`` every projection W named in ``lora_targets``
computes x W + (alpha / r) (x A) B (``rmjax.models.layers.LoRA``; B starts at zero, so the
adapted model equals its base at initialisation). Training updates only the adapters and
the heads, everything outside the base (``BASE``): ``trainable_mask`` gives the optimizer
(``rmjax.runtime.optim.make_optimizer``) that split, so optimizer state exists for them
alone, and ``grad_norm`` measures the gradient that is applied. ``merged`` folds the
adapters into W for export; ``adapt`` puts fresh adapters on any model (a PPO policy or
critic, a pretrained backbone).

Adapters are ``nnx.LoRAParam`` variables inside the params state, so checkpoints hold
them with the base, and ``rmjax.parallel`` shards them by their logical axes like W.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rmjax.models.config import LORA_TARGETS
from rmjax.models.transformer import LORA_PROJECTIONS, Transformer

# The base model's top-level parts: frozen (all but their adapters) when it has adapters.
# Everything else trains: the reward and value heads, and parameters held next to the
# model's (a path that names none of these, e.g. a loss's own parameters).
BASE = ("embed", "pos_embed", "blocks", "final_norm", "lm_head")
ALL_TARGETS = ",".join(LORA_TARGETS)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def has_adapters(tree) -> bool:
  """Whether a params (or gradient) state holds any LoRA adapter."""
  leaves = jax.tree.leaves(tree, is_leaf=_is_variable)
  return any(isinstance(x, nnx.LoRAParam) for x in leaves)


def trainable_mask(params):
  """A pytree of bools, one per variable of ``params`` (an ``nnx.State``, stacked
  ensemble members too, or a dict holding one next to other parameters): True for
  adapters and for whatever lies outside the base (``BASE``). None when ``params`` has no
  adapter (everything trains); pass it to ``make_optimizer(..., trainable=...)``."""
  if not has_adapters(params):
    return None

  def trainable(path, x):
    in_base = any(getattr(k, "key", None) in BASE for k in path)
    return isinstance(x, nnx.LoRAParam) or not in_base

  return jax.tree_util.tree_map_with_path(trainable, params, is_leaf=_is_variable)


def grad_norm(grads) -> jax.Array:
  """Global norm of the gradients the optimizer applies: of adapters and heads when
  ``grads`` holds adapters (so the frozen base's gradient need not be computed at all),
  else of everything."""
  mask = trainable_mask(grads)
  if mask is None:
    return optax.tree.norm(grads)
  kept = jax.tree.leaves(jax.tree.map(lambda m, g: g if m else None, mask, grads,
                                      is_leaf=_is_variable))
  return optax.tree.norm(kept)


def frozen_zeroed(grads):
  """``grads`` with the frozen base's leaves zeroed when it holds adapters (a step that
  moves parameters outside the optimizer, as MetaRM's lookahead, must not move the
  base either); unchanged otherwise."""
  mask = trainable_mask(grads)
  if mask is None:
    return grads
  return jax.tree.map(lambda m, g: g if m else jax.tree.map(jnp.zeros_like, g), mask, grads,
                      is_leaf=_is_variable)


def merged(model: Transformer) -> Transformer:
  """``model`` with every adapter folded into its projection, W + (alpha / r) A B, as a
  ``lora_rank = 0`` Transformer (the same function on any mesh); ``model`` itself if it
  has no adapters. What export writes."""
  cfg = model.cfg
  if not cfg.lora_rank:
    return model
  pure = nnx.to_pure_dict(nnx.state(model))
  scale = cfg.lora_alpha / cfg.lora_rank
  for target in cfg.lora_target_names:
    part, name, _ = LORA_PROJECTIONS[target]
    for block in pure["blocks"].values():
      module = block[part]
      adapter = module.pop(f"{name}_lora")
      w = module[name]
      delta = jnp.tensordot(adapter["a"].astype(jnp.float32), adapter["b"].astype(jnp.float32),
                            axes=1)
      module[name] = (w.astype(jnp.float32) + scale * delta).astype(w.dtype)
  return _with_state(cfg.replace(lora_rank=0), pure)


def adapt(model: Transformer, rank: int, alpha: float = 16.0,
          targets: str = ALL_TARGETS, seed: int = 0) -> Transformer:
  """``model`` (adapters already in it are merged first) with fresh rank-``rank``
  adapters on ``targets``, drawn as ``Transformer(cfg, rngs=nnx.Rngs(seed))`` draws
  them; rank 0: the merged model."""
  base = merged(model)
  if not rank:
    return base
  cfg = base.cfg.replace(lora_rank=rank, lora_alpha=alpha, lora_targets=targets)
  fresh = jax.jit(lambda: nnx.to_pure_dict(
      nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.LoRAParam)))()
  return _with_state(cfg, _deep_update(nnx.to_pure_dict(nnx.state(base)), fresh))


def config_fields(section) -> dict:
  """The ``lora_*`` ModelConfig fields a config section sets (a ``model``, ``actor`` or
  ``critic`` section; None or a section without them: none)."""
  if section is None:
    return {}
  return {k: section[k] for k in ("lora_rank", "lora_alpha", "lora_targets") if k in section}


def adapt_from_config(model: Transformer, section, seed: int = 0) -> Transformer:
  """``adapt`` with a config section's ``config_fields`` (no rank: merged, no adapters)."""
  fields = config_fields(section)
  return adapt(model, fields.get("lora_rank", 0), fields.get("lora_alpha", 16.0),
               fields.get("lora_targets", ALL_TARGETS), seed)


def _deep_update(tree: dict, extra: dict) -> dict:
  for key, value in extra.items():
    tree[key] = _deep_update(tree.get(key, {}), value) if isinstance(value, dict) else value
  return tree


def _with_state(cfg, pure: dict) -> Transformer:
  """A Transformer of ``cfg`` holding the arrays of the pure dict ``pure``."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)
