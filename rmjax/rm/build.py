"""Builds the reward model of a config: its ModelConfig, fresh or pretrained weights, K members."""

from __future__ import annotations

from flax import nnx

from rmjax import parallel
from rmjax.models import config as model_config
from rmjax.models import gguf_io, hf_io, lora
from rmjax.models.transformer import Transformer
from rmjax.rm import members as ensemble


def build_model_config(cfg, vocab_size: int, heads: int = 1,
                       **overrides) -> model_config.ModelConfig:
  """A preset with the config's ModelConfig fields on top (``init_from`` aside), then
  ``overrides`` (fields the loss needs: ``contrastive_aux.model_fields``)."""
  fields = {k: v for k, v in cfg.to_dict().items() if k not in ("preset", "init_from")}
  if cfg.preset not in model_config.PRESETS:
    raise ValueError(f"model.preset={cfg.preset!r} is not one of {sorted(model_config.PRESETS)}")
  return model_config.PRESETS[cfg.preset](
      **{**fields, **overrides}, vocab_size=vocab_size, num_reward_heads=heads, lm_head=False)


def _load_pretrained(cfg, vocab_size: int, seed: int, heads: int, **overrides) -> Transformer:
  """``cfg.init_from``'s backbone (GGUF file or Hugging Face folder) with fresh heads."""
  options = dict(num_reward_heads=heads, lm_head=False, seed=seed, **lora.config_fields(cfg),
                 **overrides)
  if str(cfg.init_from).endswith(".gguf"):
    model, _ = gguf_io.load_gguf(cfg.init_from, **options)
  else:
    model = hf_io.load_hf(cfg.init_from, **options)
  if model.cfg.vocab_size < vocab_size:
    raise ValueError(f"model.init_from={cfg.init_from} has {model.cfg.vocab_size} token ids "
                     f"but the data's tokenizer has {vocab_size}")
  return model


def build_model(cfg, vocab_size: int, seed: int, mesh, heads: int = 1,
                **overrides) -> Transformer:
  """A fresh reward model with ``heads`` reward heads, or one whose backbone comes from
  ``cfg.init_from`` (a GGUF file or a Hugging Face folder), sharded on ``mesh``.
  ``overrides``: ModelConfig fields set on top (``build_model_config``)."""
  if not cfg.init_from:
    mcfg = build_model_config(cfg, vocab_size, heads, **overrides)
    return parallel.init_sharded(lambda: Transformer(mcfg, rngs=nnx.Rngs(seed)), mesh)
  return parallel.shard_model(_load_pretrained(cfg, vocab_size, seed, heads, **overrides),
                              mesh)


def build_members(cfg, vocab_size: int, seed: int, mesh, layout: ensemble.Layout,
                  **overrides):
  """(graphdef, params) of ``layout``'s model(s) on ``mesh``: stacked [K, ...] for
  separate members (member m built as ``build_model`` builds it with its own seed),
  else one model with ``layout.heads`` heads."""
  if not layout.stacked:
    return nnx.split(build_model(cfg, vocab_size, seed, mesh, layout.heads, **overrides))
  seeds = ensemble.member_seeds(seed, layout.k)
  if not cfg.init_from:
    mcfg = build_model_config(cfg, vocab_size, **overrides)
    return ensemble.init_stacked(lambda rngs: Transformer(mcfg, rngs=rngs), seeds, mesh)
  # A pretrained backbone: the same in every member, heads initialised per member.
  splits = [nnx.split(_load_pretrained(cfg, vocab_size, s, 1, **overrides)) for s in seeds]
  return splits[0][0], parallel.shard_tree(ensemble.stack_states([p for _, p in splits]), mesh)


def check_layout(layout: ensemble.Layout, mesh) -> None:
  """The mesh's ensemble axis must split separate members evenly; otherwise it would
  only replicate the same work."""
  size = parallel.sharding.ensemble_size(mesh)
  if size > 1 and not layout.stacked:
    raise ValueError(f"mesh.ensemble={size} spreads separate ensemble members over devices, "
                     f"but this run has ensemble.k={layout.k}, shared_backbone="
                     f"{layout.shared_backbone}; use mesh.ensemble=1")
  if layout.k % size:
    raise ValueError(f"ensemble.k={layout.k} is not divisible by mesh.ensemble={size}")
