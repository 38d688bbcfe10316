"""The programs a run compiles, built abstractly for a mesh: no parameter is allocated.

A ``Plan`` holds what a run keeps on its devices (``resident``: named groups of
ShapeDtypeStructs carrying their shardings, each "parameters" or "optimizer") and the
jitted programs it runs, each with the abstract arguments to lower it with.

* ``train-rm``: the reward model (or stacked ensemble members) and its optimizer state;
  one program, the train step of ``rm_step.make_train_step`` jitted as the trainer
  jits it (``parallel.compile_step``), on a batch [B, seq] (or [K, B, seq] members).
* ``ppo``: actor, critic, both optimizer states, the frozen reference and one reward
  model (LoRA adapters from the ``actor`` and ``critic`` sections, as ``rmjax ppo``
  adds them); two programs, the minibatch update (``ppo_step.make_update``, as
  ``PPOTrainer.compile_update`` jits it) on [minibatch, P + N] episodes, and the
  rollout's forward (reference log-probs and critic values) on [episodes, P + N]. The
  sampler's KV-cache generation is not compiled here.

Shapes the data would normally supply come from the config's ``dry_run`` section:
``vocab_size``, ``seq_len`` (train-rm: the width of each side, or of a packed row with
``train.shared_prompt``), ``prompt_len`` and ``response_len`` (ppo), ``batch_size``
(0: ``train.batch_size``, or the PPO minibatch) and ``model`` (ppo: the policy's and
reward model's ModelConfig fields on a preset, as ``train-rm``'s ``model`` section).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rmjax import parallel
from rmjax.models import lora
from rmjax.models.transformer import Transformer
from rmjax.rl import ppo_step
from rmjax.rm import build as rm_build
from rmjax.rm import contrastive_terms as contrastive_aux
from rmjax.rm import members as ensemble
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


def rm_plan(config, mesh) -> Plan:
  """The reward-model train step of ``config`` (a ``train-rm`` config)."""
  dr = config.dry_run
  _positive(dr, "vocab_size", "seq_len")
  if config.get("metarm") is not None and config.metarm.enabled:
    raise ValueError("metarm.enabled: the dry run does not build MetaRM's meta batches yet")
  layout = ensemble.Layout.from_config(config.get("ensemble"))
  rm_build.check_layout(layout, mesh)
  rows = dr.batch_size or config.train.batch_size
  _check_rows("dry_run.batch_size (or train.batch_size)", rows, mesh)
  fields = contrastive_aux.run_model_fields(config)
  mcfg = rm_build.build_model_config(_model_section(config), dr.vocab_size, layout.heads,
                                       **fields)
  if layout.stacked:
    graphdef, params = ensemble.abstract_stacked(lambda rngs: Transformer(mcfg, rngs=rngs),
                                                 layout.k)
  else:
    graphdef, params = _abstract_model(mcfg, config.seed)
  updates = max(1, config.train.steps // config.optim.grad_accum)
  tx = make_optimizer(config.optim, updates, lora.trainable_mask(params))
  opt_state = jax.eval_shape(jax.vmap(tx.init) if layout.stacked else tx.init, params)
  state = {"params": params, "opt_state": opt_state,
           "step": jax.ShapeDtypeStruct((), jnp.int32)}
  shardings = parallel.tree_shardings(state, mesh)
  state = abstract_like(state, shardings)

  lead = (layout.k, rows) if layout.stacked else (rows,)
  width, i32, f32 = dr.seq_len, jnp.int32, jnp.float32
  if config.train.get("shared_prompt"):
    spec = {"packed_tokens": ((*lead, width), i32), "packed_segments": ((*lead, width), jnp.int8),
            "packed_positions": ((*lead, width), i32), "chosen_last": (lead, i32),
            "rejected_last": (lead, i32)}
  else:
    spec = {k: ((*lead, width), dtype) for k, dtype in (
        ("chosen_tokens", i32), ("chosen_mask", bool), ("rejected_tokens", i32),
        ("rejected_mask", bool))}
    spec["prompt_len"] = (lead, i32)
  spec.update({"margin": (lead, f32), "weight": (lead, f32), "index": (lead, i32)})
  if layout.shared_backbone and layout.bootstrap:
    spec[rm_step.HEAD_WEIGHT] = ((*lead, layout.k), f32)
  batch = _batch(spec, mesh, members=layout.stacked)

  loss_fn = rm_step.make_loss_fn(graphdef, config.loss,
                                 contrastive_aux.make_aux_loss(config.loss.get("contrastive")))
  member_devices = parallel.sharding.ensemble_size(mesh)
  step = rm_step.make_train_step(graphdef, tx, config.loss, layout, member_devices,
                                 config.seed, rm_step.make_member_update(tx, loss_fn))
  jitted = parallel.compile_step(step, mesh, shardings, {k: len(s) for k, (s, _) in spec.items()},
                                 members=layout.stacked)
  return Plan({"params": (PARAMETERS, state["params"]),
               "opt_state": (OPTIMIZER, state["opt_state"])},
              [Program("train_step", jitted, (state, batch), batch)])


def ppo_plan(config, mesh) -> Plan:
  """PPO's minibatch update and rollout forward of ``config`` (a ``ppo`` config)."""
  dr, c = config.dry_run, config.ppo
  response = dr.get("response_len") or c.max_new_tokens
  if response < 1:
    raise ValueError("dry_run.response_len (or ppo.max_new_tokens) must be >= 1: the "
                     "synthetic task would otherwise supply it")
  _positive(dr, "vocab_size", "prompt_len")
  episodes = c.prompts * c.samples_per_prompt
  if episodes % c.minibatches:
    raise ValueError(f"ppo.prompts x samples_per_prompt = {episodes} episodes do not split "
                     f"into ppo.minibatches={c.minibatches}")
  rows = dr.batch_size or episodes // c.minibatches
  _check_rows("the PPO minibatch (dry_run.batch_size or episodes / ppo.minibatches)", rows, mesh)
  _check_rows("ppo.prompts x samples_per_prompt", episodes, mesh)
  section = _model_section(config)
  actor_cfg = rm_build.build_model_config(section, dr.vocab_size, 0).replace(
      lm_head=True, **lora.config_fields(config.get("actor")))
  reward_cfg = rm_build.build_model_config(section, dr.vocab_size, 1)
  critic_cfg = reward_cfg.replace(value_head=True, **lora.config_fields(config.get("critic")))
  actor_graphdef, actor = _abstract_model(actor_cfg)
  critic_graphdef, critic = _abstract_model(critic_cfg)
  _, reward_model = _abstract_model(reward_cfg)
  updates = max(1, c.iterations * c.epochs * c.minibatches)
  actor_tx = make_optimizer(config.optim.actor, updates, lora.trainable_mask(actor))
  critic_tx = make_optimizer(config.optim.critic, updates, lora.trainable_mask(critic))
  state = {"actor": actor, "critic": critic, "actor_opt": jax.eval_shape(actor_tx.init, actor),
           "critic_opt": jax.eval_shape(critic_tx.init, critic),
           "step": jax.ShapeDtypeStruct((), jnp.int32)}
  shardings = parallel.tree_shardings(state, mesh)
  state = abstract_like(state, shardings)
  reference, reward_model = _sharded(actor, mesh), _sharded(reward_model, mesh)

  width, f32 = dr.prompt_len + response, jnp.float32
  spec = {"tokens": ((rows, width), jnp.int32), "mask": ((rows, width), bool),
          "response_mask": ((rows, response), bool)}
  spec.update({k: ((rows, response), f32) for k in ppo_step.EPISODE_KEYS[3:]})
  if c.ptx_coef:
    spec.update({"ptx_tokens": ((rows, width), jnp.int32), "ptx_mask": ((rows, width), bool)})
  minibatch = _batch(spec, mesh)
  update = ppo_step.make_update(actor_graphdef, critic_graphdef, actor_tx, critic_tx,
                                dr.prompt_len, c)
  update_jit = parallel.compile_step(update, mesh, shardings,
                                     {k: len(s) for k, (s, _) in spec.items()})

  rollout = _batch({"tokens": ((episodes, width), jnp.int32),
                    "mask": ((episodes, width), bool)}, mesh)
  forward = _rollout_forward(actor_graphdef, critic_graphdef, dr.prompt_len, c.temperature)
  out = parallel.sharding.batch_sharding(mesh, 2)
  forward_jit = jax.jit(parallel.sharding.on_mesh(forward, mesh),
                        in_shardings=(shardings["actor"], shardings["critic"], out, out),
                        out_shardings=(out, out))
  args = (reference, state["critic"], rollout["tokens"], rollout["mask"])
  resident = {"actor": (PARAMETERS, state["actor"]), "critic": (PARAMETERS, state["critic"]),
              "reference": (PARAMETERS, reference), "reward_model": (PARAMETERS, reward_model),
              "actor_opt": (OPTIMIZER, state["actor_opt"]),
              "critic_opt": (OPTIMIZER, state["critic_opt"])}
  return Plan(resident, [Program("ppo_update", update_jit, (state, minibatch), minibatch),
                         Program("rollout_forward", forward_jit, args, rollout)])


def _rollout_forward(actor_graphdef, critic_graphdef, prompt_width: int,
                     temperature: float) -> Callable:
  """(reference, critic, tokens, mask [B, P + N]) -> (reference log-probs [B, N], critic
  values [B, N]): what ``PPOTrainer._rollout_forward`` computes."""

  def forward(reference, critic, tokens, mask):
    ref_logprobs, _ = ppo_step.response_logprobs(nnx.merge(actor_graphdef, reference), tokens,
                                                 mask, prompt_width, temperature)
    values = ppo_step.response_values(nnx.merge(critic_graphdef, critic), tokens, mask,
                                      prompt_width)
    return ref_logprobs, values

  return forward


PLANS = {"train-rm": rm_plan, "ppo": ppo_plan}


def build(config, mesh) -> Plan:
  command = config.dry_run.command
  if command not in PLANS:
    raise ValueError(f"dry_run.command={command!r} is not one of {sorted(PLANS)}")
  return PLANS[command](config, mesh)
