"""Builds what PPO trains and scores with: the critic, reward models, the task."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rmjax import parallel
from rmjax.models.transformer import Transformer
from rmjax.parallel.sharding import to_host
from rmjax.rm.load import load_ensemble
from rmjax.tasks import preference as synthetic

CRITIC_INITS = ("reward_model", "policy")


def critic_from(model: Transformer, mesh):
  """(graphdef, params) of a critic: ``model``'s backbone plus a value head, initialised
  from its first reward head when it has one (a reward model), else zeros."""
  cfg = model.cfg.replace(value_head=True)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  pure = nnx.to_pure_dict(nnx.state(model))
  head = pure.get("reward_head")
  pure["value_head"] = (to_host(head)[:, 0] if head is not None
                        else np.zeros(cfg.d_model, np.float32))
  nnx.replace_by_pure_dict(abstract, pure)
  # Own buffers: the update donates the critic, and the reward model must live on.
  return graphdef, jax.tree.map(jnp.copy, parallel.shard_tree(abstract, mesh))


def first_member(scorer) -> Transformer:
  """The reward model behind a scorer; member 0 of separate ensemble members."""
  if not scorer.layout.stacked:
    return nnx.merge(scorer.graphdef, scorer.params)
  pure = jax.tree.map(lambda x: x[0], nnx.to_pure_dict(scorer.params))
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(scorer.cfg, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def load_reward_models(workdirs, mesh):
  """(scorers, the first run's config) of ``reward.workdirs``."""
  if not workdirs:
    raise ValueError("reward.workdirs is empty; train a reward model with rmjax train-rm")
  loaded = [load_ensemble(w, mesh) for w in workdirs]
  return [scorer for scorer, _ in loaded], loaded[0][1]


def task_of(run_config) -> synthetic.SyntheticTask:
  """The synthetic task a reward model was trained on (its policy and gold reward)."""
  if run_config.data.source != "synthetic":
    raise ValueError(f"rmjax ppo runs on the synthetic task; the reward model in "
                     f"{run_config.checkpoint.directory} was trained on data.source="
                     f"{run_config.data.source!r}")
  return synthetic.build_task(synthetic.SyntheticConfig(**run_config.data.synthetic.to_dict()))
