"""The programs a run compiles, built abstractly for a mesh: no parameter is allocated.

A ``Plan`` holds what a run keeps on its devices (``resident``: named groups of
ShapeDtypeStructs carrying their shardings, each "parameters" or "optimizer") and the
jitted programs it runs, each with the abstract arguments to lower it with.

* ``train-rm``: the reward model (or stacked ensemble members, with the contrastive
  loss's own parameters when it has some) and its optimizer state; one program, the
  train step of ``rm_build.build``, the builder the trainer runs, compiled as the trainer
  compiles it, on a batch [B, seq] (or [K, B, seq] members), with MetaRM's meta responses
  when it is on. A pretrained backbone (``model.init_from``) gives its shapes from its
  config.json or GGUF metadata; no weight is read.
* ``rl``: actor, critic, both optimizer states, the frozen reference and one reward
  model (LoRA adapters from the ``actor`` and ``critic`` sections, as ``rmjax rl``
  adds them); two programs, the minibatch update (``ppo_step.make_update``, as
  ``RLTrainer.update_fn`` jits it) on [minibatch, P + N] episodes, and the
  rollout's forward (reference log-probs and critic values) on [episodes, P + N]. The
  sampler's KV-cache generation is not compiled here.

Shapes the data would normally supply come from the config's ``dry_run`` section:
``vocab_size``, ``seq_len`` (train-rm: the width of each side, or of a packed row with
``train.shared_prompt``), ``prompt_len`` and ``response_len`` (rl), ``batch_size``
(0: ``train.batch_size``, or the PPO minibatch) and ``model`` (rl: the policy's and
reward model's ModelConfig fields on a preset, as ``train-rm``'s ``model`` section).
MetaRM's meta responses (prompt and response joined) are ``seq_len`` wide too.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from rmjax import parallel
from rmjax.models import lora
from rmjax.models.transformer import Transformer
from rmjax.rl import algorithms, ppo_step
from rmjax.rm import build as rm_build
from rmjax.rm import metarm
from rmjax.rm import step as rm_step
from rmjax.runtime.checkpoint import abstract_like
from rmjax.runtime.optim import make_optimizer

PARAMETERS, OPTIMIZER = "parameters", "optimizer"


@dataclasses.dataclass
class Program:
  """A jitted function and the abstract arguments it is lowered with; ``batch`` names
  the argument that is data (the rest is resident state)."""

  name: str
  jitted: Any
  args: tuple
  batch: Any


@dataclasses.dataclass
class Plan:
  resident: dict[str, tuple[str, Any]]  # name -> (PARAMETERS or OPTIMIZER, abstract tree)
  programs: list[Program]


def _abstract_model(cfg, seed: int = 0):
  """(graphdef, abstract state) of ``Transformer(cfg)``: shapes only."""
  return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed))))


def _sharded(tree, mesh):
  """``tree`` (abstract) as ShapeDtypeStructs carrying its logical shardings on ``mesh``."""
  return abstract_like(tree, parallel.tree_shardings(tree, mesh))


def _batch(fields: dict[str, tuple[tuple[int, ...], Any]], mesh, members: bool = False):
  """Abstract batch: ShapeDtypeStructs sharded as ``parallel.batch_sharding`` shards them."""
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.sharding.batch_sharding(
      mesh, len(shape), members)) for k, (shape, dtype) in fields.items()}


def _check_rows(name: str, rows: int, mesh) -> None:
  size = parallel.sharding.data_parallel_size(mesh)
  if rows < 1 or rows % size:
    raise ValueError(f"{name}={rows} is not divisible by the data-parallel size {size} "
                     f"(data x fsdp of mesh {dict(mesh.shape)})")


def _positive(section, *names) -> None:
  for name in names:
    if section.get(name, 0) < 1:
      raise ValueError(f"dry_run.{name}={section.get(name)} must be >= 1")


def _model_section(config):
  section = config.dry_run.get("model") or config.get("model")
  if section is None:
    raise ValueError("the config has no model section: set dry_run.model (a preset and "
                     "ModelConfig fields, as train-rm's model section)")
  if section.get("init_from"):
    raise ValueError(f"model.init_from={section.init_from}: a dry run builds shapes from the "
                     "preset and fields; set them to the checkpoint's shapes instead")
  return section


def _rm_run_config(config):
  """``config`` as ``train-rm`` would run it with the dry run's batch (``dry_run.batch_size``
  when set) and model (``dry_run.model`` when set)."""
  dr = config.dry_run
  run = ml_collections.ConfigDict(config.to_dict())
  if dr.batch_size:
    run.train.batch_size = dr.batch_size
  if dr.get("model"):
    run.model = dr.model
  return run


def rm_batch(program: rm_build.RMProgram, seq_len: int) -> dict:
  """The batch fields (name -> (shape, dtype)) a ``train-rm`` step of ``program`` reads,
  rows ``seq_len`` wide (each side, or the packed row with ``train.shared_prompt``; MetaRM's
  responses, prompt included, too)."""
  spec = program.spec
  layout = spec.layout
  lead = (layout.k, spec.batch_size) if layout.stacked else (spec.batch_size,)
  i32, f32 = jnp.int32, jnp.float32
  if spec.shared_prompt:
    fields = {"packed_tokens": ((*lead, seq_len), i32),
              "packed_segments": ((*lead, seq_len), jnp.int8),
              "packed_positions": ((*lead, seq_len), i32), "chosen_last": (lead, i32),
              "rejected_last": (lead, i32)}
  else:
    fields = {k: ((*lead, seq_len), dtype) for k, dtype in (
        ("chosen_tokens", i32), ("chosen_mask", bool), ("rejected_tokens", i32),
        ("rejected_mask", bool))}
    fields["prompt_len"] = (lead, i32)
  fields.update({"margin": (lead, f32), "weight": (lead, f32), "index": (lead, i32)})
  if layout.shared_backbone and layout.bootstrap and layout.k > 1:
    fields[rm_step.HEAD_WEIGHT] = ((*lead, layout.k), f32)
  if spec.metarm is not None:
    members = (layout.k,) if layout.stacked else ()
    meta = (*members, spec.metarm.prompts_per_step, spec.metarm.k, seq_len)
    fields.update({metarm.META_TOKENS: (meta, i32), metarm.META_MASK: (meta, bool)})
  return fields


def rm_plan(config, mesh) -> Plan:
  """The reward-model train step of ``config`` (a ``train-rm`` config): the program
  ``rm_build.build`` gives the trainer, built abstractly. Strength options and other
  per-pair loss settings a batch may carry are not part of the batch here."""
  dr = config.dry_run
  _positive(dr, "vocab_size", "seq_len")
  run = _rm_run_config(config)
  _check_rows("dry_run.batch_size (or train.batch_size)", run.train.batch_size, mesh)
  program = rm_build.build(run, dr.vocab_size, mesh, abstract=True)
  fields = rm_batch(program, dr.seq_len)
  batch = _batch(fields, mesh, members=program.spec.layout.stacked)
  jitted = program.compile_train_step({k: len(shape) for k, (shape, _) in fields.items()})
  state = program.state
  return Plan({"params": (PARAMETERS, state["params"]),
               "opt_state": (OPTIMIZER, state["opt_state"])},
              [Program("train_step", jitted, (state, batch), batch)])


def _policy_config(config, section, vocab_size: int):
  """The actor's architecture: that of ``policy.init_from`` (a Hugging Face folder's
  config.json or a GGUF file's metadata; no weight is read) with the section's run fields
  (dtype, remat, ...), else the model section's. The reward model and critic keep the
  model section's shapes."""
  init_from = str((config.get("policy") or {}).get("init_from", "") or "")
  if not init_from:
    return rm_build.build_model_config(section, vocab_size, 0)
  if not init_from.endswith(".gguf") and not (pathlib.Path(init_from) / "config.json").is_file():
    raise ValueError(f"policy.init_from={init_from}: the dry run reads a policy's shapes from "
                     "a Hugging Face folder or a GGUF file; for an rmjax rl workdir leave "
                     "policy.init_from empty and give its shapes in dry_run.model")
  run = {k: section[k] for k in rm_build.RUN_FIELDS if k in section}
  return rm_build.pretrained_config(ml_collections.ConfigDict({"init_from": init_from, **run}),
                                    heads=0)


def rl_plan(config, mesh) -> Plan:
  """The minibatch update and rollout forward of ``config`` (an ``rl`` config), with a
  critic only where ``rl.algorithm`` trains one."""
  dr, c = config.dry_run, config.rl
  settings = algorithms.settings(c, config.kl)
  response = dr.get("response_len") or c.max_new_tokens
  if response < 1:
    raise ValueError("dry_run.response_len (or rl.max_new_tokens) must be >= 1: the "
                     "synthetic task would otherwise supply it")
  _positive(dr, "vocab_size", "prompt_len")
  episodes = c.prompts * c.samples_per_prompt
  if episodes % c.minibatches:
    raise ValueError(f"rl.prompts x samples_per_prompt = {episodes} episodes do not split "
                     f"into rl.minibatches={c.minibatches}")
  rows = dr.batch_size or episodes // c.minibatches
  _check_rows("the PPO minibatch (dry_run.batch_size or episodes / rl.minibatches)", rows, mesh)
  _check_rows("rl.prompts x samples_per_prompt", episodes, mesh)
  section = _model_section(config)
  actor_cfg = _policy_config(config, section, dr.vocab_size).replace(
      lm_head=True, **lora.config_fields(config.get("actor")))
  reward_cfg = rm_build.build_model_config(section, dr.vocab_size, 1)
  critic_cfg = reward_cfg.replace(value_head=True, **lora.config_fields(config.get("critic")))
  actor_graphdef, actor = _abstract_model(actor_cfg)
  _, reward_model = _abstract_model(reward_cfg)
  updates = max(1, c.iterations * c.epochs * c.minibatches)
  actor_tx = make_optimizer(config.optim.actor, updates, lora.trainable_mask(actor))
  state = {"actor": actor, "actor_opt": jax.eval_shape(actor_tx.init, actor),
           "step": jax.ShapeDtypeStruct((), jnp.int32)}
  critic_graphdef = critic_tx = None
  if settings.critic:
    critic_graphdef, critic = _abstract_model(critic_cfg)
    critic_tx = make_optimizer(config.optim.critic, updates, lora.trainable_mask(critic))
    state.update(critic=critic, critic_opt=jax.eval_shape(critic_tx.init, critic))
  shardings = parallel.tree_shardings(state, mesh)
  state = abstract_like(state, shardings)
  reference, reward_model = _sharded(actor, mesh), _sharded(reward_model, mesh)

  width, f32 = dr.prompt_len + response, jnp.float32
  spec = {"tokens": ((rows, width), jnp.int32), "mask": ((rows, width), bool),
          "response_mask": ((rows, response), bool)}
  spec.update({k: ((rows,) if k == "kl_coef" else (rows, response), f32)
               for k in ppo_step.episode_keys(settings)[3:]})
  if c.ptx_coef:
    spec.update({"ptx_tokens": ((rows, width), jnp.int32), "ptx_mask": ((rows, width), bool)})
  minibatch = _batch(spec, mesh)
  update = ppo_step.make_update(actor_graphdef, critic_graphdef, actor_tx, critic_tx,
                                dr.prompt_len, c, settings)
  update_jit = parallel.compile_step(update, mesh, shardings,
                                     {k: len(s) for k, (s, _) in spec.items()})

  rollout = _batch({"tokens": ((episodes, width), jnp.int32),
                    "mask": ((episodes, width), bool)}, mesh)
  forward = _rollout_forward(actor_graphdef, critic_graphdef, dr.prompt_len, c.temperature)
  out = parallel.sharding.batch_sharding(mesh, 2)
  forward_jit = jax.jit(parallel.sharding.on_mesh(forward, mesh),
                        in_shardings=(shardings["actor"], shardings.get("critic"), out, out),
                        out_shardings=(out, out if settings.critic else None))
  args = (reference, state.get("critic"), rollout["tokens"], rollout["mask"])
  resident = {"actor": (PARAMETERS, state["actor"]), "reference": (PARAMETERS, reference),
              "reward_model": (PARAMETERS, reward_model),
              "actor_opt": (OPTIMIZER, state["actor_opt"])}
  if settings.critic:
    resident.update(critic=(PARAMETERS, state["critic"]),
                    critic_opt=(OPTIMIZER, state["critic_opt"]))
  return Plan(resident, [Program("rl_update", update_jit, (state, minibatch), minibatch),
                         Program("rollout_forward", forward_jit, args, rollout)])


def _rollout_forward(actor_graphdef, critic_graphdef, prompt_width: int,
                     temperature: float) -> Callable:
  """(reference, critic, tokens, mask [B, P + N]) -> (reference log-probs [B, N], critic
  values [B, N] or None without a critic): what ``RLTrainer._rollout_forward`` computes."""

  def forward(reference, critic, tokens, mask):
    ref_logprobs, _ = ppo_step.response_logprobs(nnx.merge(actor_graphdef, reference), tokens,
                                                 mask, prompt_width, temperature)
    if critic is None:
      return ref_logprobs, None
    values = ppo_step.response_values(nnx.merge(critic_graphdef, critic), tokens, mask,
                                      prompt_width)
    return ref_logprobs, values

  return forward


PLANS = {"train-rm": rm_plan, "rl": rl_plan}


def build(config, mesh) -> Plan:
  command = config.dry_run.command
  if command not in PLANS:
    raise ValueError(f"dry_run.command={command!r} is not one of {sorted(PLANS)}")
  return PLANS[command](config, mesh)
