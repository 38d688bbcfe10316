"""The reward-model program of a ``train-rm`` config, built in one place.

``RMSpec.from_config`` reads the config once (ensemble layout, model section, loss,
contrastive term, MetaRM, optimizer, batch size, steps and updates) and validates it;
``build(config, vocab_size, mesh)`` turns it into an ``RMProgram``: the graph definition,
the parameters, the optimizer, the train state and its shardings, the train step (the
member update, MetaRM's lookahead when on, the contrastive term when on) and the eval
step. The trainer (``rm/trainer.py``) builds it with real arrays; the dry run
(``rmjax/dry_run/programs.py``) with ``abstract=True``: every array is then a
``jax.ShapeDtypeStruct`` carrying its sharding and nothing is allocated, a pretrained
backbone (``model.init_from``) included, whose shapes come from its ``config.json`` or
GGUF metadata alone. ``rm/load.py`` rebuilds a trained run's architecture with
``model_config``.

Parameters are the model's ``nnx.State`` (stacked [K, ...] for separate members), or,
when the contrastive term has parameters of its own (SwAV's prototypes),
``{"model": <that state>, "prototypes": ...}`` (``rm_step.model_params`` reads the model's
part back).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import gguf
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rmjax import parallel
from rmjax.models import config as model_config_lib
from rmjax.models import gguf_io, hf_io, lora
from rmjax.models.transformer import Transformer
from rmjax.rm import contrastive_terms, metarm
from rmjax.rm import members as ensemble
from rmjax.rm import step as rm_step
from rmjax.runtime.checkpoint import abstract_like
from rmjax.runtime.optim import make_optimizer

_POSITIVE_TRAIN_FIELDS = ("steps", "log_every", "eval_every", "save_every")


@dataclasses.dataclass(frozen=True, eq=False)
class RMSpec:
  """What a ``train-rm`` config asks for, read and checked once."""

  layout: ensemble.Layout
  model: Any  # the config's model section: preset and ModelConfig fields, or init_from
  model_fields: dict  # ModelConfig fields the loss adds (``contrastive_terms.model_fields``)
  loss: Any  # the config's loss section (``rm_step.make_loss_fn``)
  contrastive: contrastive_terms.Options  # resolved ``loss.contrastive``
  metarm: Any  # the metarm section when MetaRM is on, else None
  optim: Any
  seed: int
  batch_size: int
  steps: int  # micro-batches
  updates: int  # optimizer updates: steps // optim.grad_accum
  shared_prompt: bool

  @classmethod
  def from_config(cls, config) -> RMSpec:
    tc = config.train
    for name in _POSITIVE_TRAIN_FIELDS:
      if tc[name] < 1:
        raise ValueError(f"train.{name}={tc[name]} must be >= 1")
    if tc.batch_size < 1:
      raise ValueError(f"train.batch_size={tc.batch_size} must be >= 1")
    updates = tc.steps // config.optim.grad_accum
    if updates < 1:
      raise ValueError(f"train.steps={tc.steps} gives no update with "
                       f"optim.grad_accum={config.optim.grad_accum}")
    meta = config.get("metarm")
    meta = meta if meta is not None and meta.enabled else None
    layout = ensemble.Layout.from_config(config.get("ensemble"))
    if layout.gaussian and meta is not None:
      raise ValueError("ensemble.gaussian=True with metarm.enabled=True: MetaRM's difference "
                       "loss reads scalar rewards; turn one of them off")
    contrastive = config.loss.get("contrastive")
    return cls(layout=layout, model=config.model,
               model_fields=contrastive_terms.model_fields(contrastive), loss=config.loss,
               contrastive=contrastive_terms.resolve(contrastive),
               metarm=meta,
               optim=config.optim, seed=int(config.seed), batch_size=int(tc.batch_size),
               steps=int(tc.steps), updates=updates,
               shared_prompt=bool(tc.get("shared_prompt", False)))

  @property
  def prototypes(self) -> int:
    """SwAV's prototype count when the contrastive term has prototypes, else 0."""
    return contrastive_terms.prototype_count(self.contrastive)


@dataclasses.dataclass
class RMProgram:
  """A reward-model run's model, state and steps on ``mesh``.

  ``state``: {"params", "opt_state", "step"}, real arrays already in ``shardings``, or
  ShapeDtypeStructs carrying them (``abstract=True``). ``train_step(state, batch) ->
  (state, metrics)`` is pure; ``compile_train_step`` jits it as every run does.
  ``eval_step(params, batch)`` is jitted: float32 [B, K] member rewards of both sides.
  """

  spec: RMSpec
  mesh: Any
  model_cfg: model_config_lib.ModelConfig  # one member's architecture
  graphdef: Any
  tx: optax.GradientTransformation
  state: dict
  shardings: dict
  train_step: Callable
  eval_step: Callable

  def compile_train_step(self, batch_ndims):
    """The train step jitted with the state's shardings and the batch sharded by rows
    (``batch_ndims``: each batch field's rank), the incoming state donated."""
    return parallel.compile_step(self.train_step, self.mesh, self.shardings, batch_ndims,
                                 members=self.spec.layout.stacked)

  @property
  def abstract_state(self):
    """The state as ShapeDtypeStructs with its shardings: what a checkpoint restores onto."""
    return abstract_like(self.state, self.shardings)


def build_model_config(cfg, vocab_size: int, heads: int = 1,
                       **overrides) -> model_config_lib.ModelConfig:
  """A preset with the config's ModelConfig fields on top (``init_from`` aside), then
  ``overrides`` (fields the loss needs: ``contrastive_terms.model_fields``)."""
  presets = model_config_lib.PRESETS
  fields = {k: v for k, v in cfg.to_dict().items() if k not in ("preset", "init_from")}
  if cfg.preset not in presets:
    raise ValueError(f"model.preset={cfg.preset!r} is not one of {sorted(presets)}")
  return presets[cfg.preset](
      **{**fields, **overrides}, vocab_size=vocab_size, num_reward_heads=heads, lm_head=False)


# ModelConfig fields of a model section that set how a pretrained backbone runs, not its
# architecture (which is the file's): applied on top of the file's config when present.
RUN_FIELDS = ("dtype", "param_dtype", "remat", "dropout_rate")


def _pretrained_options(cfg, heads: int, overrides: dict) -> dict:
  """The ModelConfig fields a pretrained backbone is loaded with on top of its file's: the
  section's ``RUN_FIELDS`` and LoRA fields, the heads, then ``overrides``."""
  run = {k: cfg[k] for k in RUN_FIELDS if k in cfg}
  return {**run, **lora.config_fields(cfg), "num_reward_heads": heads, "lm_head": False,
          **overrides}


def pretrained_config(cfg, heads: int = 1, **overrides) -> model_config_lib.ModelConfig:
  """The architecture of ``cfg.init_from`` as a reward model, read from the Hugging Face
  folder's config.json or the GGUF file's metadata; no weight is read."""
  options = _pretrained_options(cfg, heads, overrides)
  path = pathlib.Path(cfg.init_from)
  if str(cfg.init_from).endswith(".gguf"):
    if not path.is_file():
      raise FileNotFoundError(f"model.init_from={cfg.init_from}: no such GGUF file")
    return gguf_io.config_from_gguf(gguf.GGUFReader(str(path)), **options)
  if not (path / "config.json").is_file():
    raise FileNotFoundError(f"model.init_from={cfg.init_from} has no config.json")
  return hf_io.config_from_hf(json.loads((path / "config.json").read_text()), **options)


def model_config(cfg, vocab_size: int, heads: int = 1,
                 **overrides) -> model_config_lib.ModelConfig:
  """One member's architecture: ``build_model_config``, or ``pretrained_config`` for a
  section with ``init_from`` (whose vocabulary is the file's, at least ``vocab_size``)."""
  if not cfg.get("init_from"):
    return build_model_config(cfg, vocab_size, heads, **overrides)
  mcfg = pretrained_config(cfg, heads, **overrides)
  _check_vocab(cfg, mcfg.vocab_size, vocab_size)
  return mcfg


def _check_vocab(cfg, model_vocab: int, vocab_size: int) -> None:
  if model_vocab < vocab_size:
    raise ValueError(f"model.init_from={cfg.init_from} has {model_vocab} token ids "
                     f"but the data's tokenizer has {vocab_size}")


def _load_pretrained(cfg, vocab_size: int, seed: int, heads: int, **overrides) -> Transformer:
  """``cfg.init_from``'s backbone (GGUF file or Hugging Face folder) with fresh heads."""
  options = dict(seed=seed, **_pretrained_options(cfg, heads, overrides))
  if str(cfg.init_from).endswith(".gguf"):
    model, _ = gguf_io.load_gguf(cfg.init_from, **options)
  else:
    model = hf_io.load_hf(cfg.init_from, **options)
  _check_vocab(cfg, model.cfg.vocab_size, vocab_size)
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
  else one model with ``layout.heads`` members; each model has ``layout.columns`` reward
  heads (two per member with Gaussian heads)."""
  if not layout.stacked:
    return nnx.split(build_model(cfg, vocab_size, seed, mesh, layout.columns, **overrides))
  seeds = ensemble.member_seeds(seed, layout.k)
  if not cfg.init_from:
    mcfg = build_model_config(cfg, vocab_size, layout.columns, **overrides)
    return ensemble.init_stacked(lambda rngs: Transformer(mcfg, rngs=rngs), seeds, mesh)
  # A pretrained backbone: the same in every member, heads initialised per member.
  splits = [nnx.split(_load_pretrained(cfg, vocab_size, s, layout.columns, **overrides))
            for s in seeds]
  return splits[0][0], parallel.shard_tree(ensemble.stack_states([p for _, p in splits]), mesh)


def abstract_members(mcfg: model_config_lib.ModelConfig, layout: ensemble.Layout):
  """(graphdef, params as ShapeDtypeStructs) of ``layout``'s model(s) of architecture
  ``mcfg`` (one member's), nothing allocated: the structure ``build_members`` builds."""
  make = lambda rngs: Transformer(mcfg, rngs=rngs)
  if layout.stacked:
    return ensemble.abstract_stacked(make, layout.k)
  return nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))


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


def check_mesh(spec: RMSpec, mesh) -> None:
  """The layout fits the mesh and the batch splits over its data-parallel devices."""
  check_layout(spec.layout, mesh)
  data_parallel = parallel.sharding.data_parallel_size(mesh)
  if spec.batch_size % data_parallel:
    raise ValueError(f"train.batch_size={spec.batch_size} is not divisible by the "
                     f"data-parallel size {data_parallel} of mesh {dict(mesh.shape)}")


def _member_seeds(spec: RMSpec) -> list[int]:
  return ensemble.member_seeds(spec.seed, spec.layout.k) if spec.layout.stacked else [spec.seed]


def _params(spec: RMSpec, vocab_size: int, mesh, abstract: bool):
  """(model config, graphdef, params): real and sharded on ``mesh``, or ShapeDtypeStructs."""
  layout = spec.layout
  mcfg = model_config(spec.model, vocab_size, layout.columns, **spec.model_fields)
  if abstract:
    graphdef, params = abstract_members(mcfg, layout)
  else:
    graphdef, params = build_members(spec.model, vocab_size, spec.seed, mesh, layout,
                                     **spec.model_fields)
  if spec.prototypes:
    make = lambda: contrastive_terms.init_prototypes(
        _member_seeds(spec), mcfg.d_model, spec.prototypes, mcfg.weight_dtype, layout.stacked)
    if abstract:
      prototypes = jax.eval_shape(make)
    else:
      prototypes = jax.jit(make, out_shardings=parallel.tree_shardings(
          jax.eval_shape(make), mesh))()
    params = {rm_step.MODEL: params, contrastive_terms.PROTOTYPES: prototypes}
  return mcfg, graphdef, params


def _update(spec: RMSpec, graphdef, tx):
  """One member's update: a gradient step on the loss (BT plus the contrastive term),
  after MetaRM's lookahead when it is on."""
  loss_fn = rm_step.make_loss_fn(graphdef, spec.loss,
                                 contrastive_terms.make_aux_loss(spec.contrastive),
                                 gaussian=spec.layout.gaussian)
  if spec.metarm is None:
    return rm_step.make_member_update(tx, loss_fn)
  return metarm.make_meta_update(graphdef, tx, loss_fn, spec.metarm.eta,
                                 spec.metarm.first_order)


def build(config, vocab_size: int, mesh, abstract: bool = False) -> RMProgram:
  """The ``RMProgram`` of ``config`` (a ``train-rm`` config) for data of ``vocab_size``
  token ids on ``mesh``; ``abstract``: shapes and shardings only (see the module)."""
  spec = RMSpec.from_config(config)
  check_mesh(spec, mesh)
  if spec.metarm is not None:
    metarm.check_config(spec.metarm, config.data.source,
                        parallel.sharding.data_parallel_size(mesh))
  layout = spec.layout
  mcfg, graphdef, params = _params(spec, vocab_size, mesh, abstract)
  tx = make_optimizer(spec.optim, spec.updates, lora.trainable_mask(params))
  opt_init = jax.vmap(tx.init) if layout.stacked else tx.init  # one state per member
  if abstract:
    state = {"params": params, "opt_state": jax.eval_shape(opt_init, params),
             "step": jax.ShapeDtypeStruct((), jnp.int32)}
    shardings = parallel.tree_shardings(state, mesh)
    state = abstract_like(state, shardings)
  else:
    opt_shardings = parallel.tree_shardings(jax.eval_shape(opt_init, params), mesh)
    state = {"params": params,
             "opt_state": jax.jit(opt_init, out_shardings=opt_shardings)(params),
             "step": jnp.zeros((), jnp.int32)}
    shardings = parallel.tree_shardings(state, mesh)
    state = jax.device_put(state, shardings)  # committed like the step's outputs: one compile
  member_devices = parallel.sharding.ensemble_size(mesh)
  train_step = rm_step.make_train_step(graphdef, tx, spec.loss, layout, member_devices,
                                       spec.seed, _update(spec, graphdef, tx))
  eval_step = jax.jit(parallel.sharding.on_mesh(
      rm_step.make_eval_step(graphdef, layout, member_devices), mesh))
  return RMProgram(spec=spec, mesh=mesh, model_cfg=mcfg, graphdef=graphdef, tx=tx, state=state,
                   shardings=shardings, train_step=train_step, eval_step=eval_step)
