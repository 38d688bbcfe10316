"""Shard parameters, optimizer state and batches; compile a step with explicit shardings.

The pattern every trainer uses::

    state_sh = tree_shardings(state, mesh)          # from logical axis names
    step = compile_step(step_fn, mesh, state_sh, batch_ndims)
    state, metrics = step(state, shard_batch(batch, mesh))

``step_fn(state, batch) -> (state, metrics)`` is a pure function, jitted once.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rmjax.parallel.rules import LOGICAL_RULES, logical_to_spec

BATCH_AXES = ("data", "fsdp")


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def tree_shardings(tree, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedShardings for every array of ``tree``.

  ``nnx.Variable`` leaves carrying ``axes`` metadata (model parameters, and optax
  moments, which copy the parameters' structure) are sharded by the rules; all other
  arrays (step counters, scalars) are replicated.
  """
  def one(x):
    if _is_variable(x):
      axes = x.get_metadata().get("axes")
      spec = (logical_to_spec(axes, x.shape, mesh, rules) if axes is not None
              else PartitionSpec())
      return x.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(one, tree, is_leaf=_is_variable)


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) dimension over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def check_batch(batch, mesh: Mesh) -> None:
  size = data_parallel_size(mesh)
  for path, x in jax.tree_util.tree_leaves_with_path(batch):
    if np.ndim(x) == 0:
      raise ValueError(f"batch field {jax.tree_util.keystr(path)} is a scalar; every "
                       "batch field needs a leading batch dimension")
    if x.shape[0] % size:
      raise ValueError(
          f"batch field {jax.tree_util.keystr(path)} has {x.shape[0]} rows, which the "
          f"data-parallel size {size} (data x fsdp of mesh {dict(mesh.shape)}) does "
          "not divide")


def shard_batch(batch, mesh: Mesh):
  """Place a host batch (pytree of arrays, batch-major) on the mesh."""
  check_batch(batch, mesh)
  return jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, np.ndim(x))), batch)


def shard_tree(tree, mesh: Mesh, rules=LOGICAL_RULES):
  """Move ``tree`` (e.g. an ``nnx.State``) onto the mesh by its logical axes."""
  return jax.device_put(tree, tree_shardings(tree, mesh, rules))


def shard_model(model: nnx.Module, mesh: Mesh, rules=LOGICAL_RULES) -> nnx.Module:
  """A copy of ``model`` whose parameters live on ``mesh``."""
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, shard_tree(state, mesh, rules))


def init_sharded(make_model, mesh: Mesh, rules=LOGICAL_RULES) -> nnx.Module:
  """Build ``make_model()`` with every parameter created directly in its shard.

  The model is traced abstractly first, so no device ever holds the full model.
  """
  graphdef, abstract = nnx.split(nnx.eval_shape(make_model))
  shardings = tree_shardings(abstract, mesh, rules)
  state = jax.jit(lambda: nnx.split(make_model())[1], out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def compile_step(step_fn, mesh: Mesh, state_shardings, batch_ndims, *, donate=True):
  """Jit ``step_fn(state, batch) -> (state, metrics)`` once with explicit shardings.

  ``batch_ndims``: pytree matching the batch, giving each field's rank. Metrics come
  back replicated. The incoming state is donated (its buffers reused) by default.
  """
  batch_shardings = jax.tree.map(lambda n: batch_sharding(mesh, n), batch_ndims)
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, replicated),
                 donate_argnums=(0,) if donate else ())
