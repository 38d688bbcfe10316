"""Shard parameters, optimizer state and batches; compile a step with explicit shardings.

The pattern every trainer uses::

    state_sh = tree_shardings(state, mesh)          # from logical axis names
    step = compile_step(step_fn, mesh, state_sh, batch_ndims)
    state, metrics = step(state, shard_batch(batch, mesh))

``step_fn(state, batch) -> (state, metrics)`` is a pure function, jitted once. The
stacked members of an ensemble take member-major batches ``[members, batch, ...]``
(``members=True``): members over the ``ensemble`` axis, rows over the data axes.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rmjax.parallel import activations
from rmjax.parallel.rules import LOGICAL_RULES, logical_to_spec

BATCH_AXES = ("data", "fsdp")  # as rules.py maps "batch"
ENSEMBLE_AXIS = "ensemble"  # as rules.py maps "ensemble"
# Activations the model names (``activations.shard_activation``): rows over the data-parallel
# axes, every other dimension whole. Without this, GSPMD meets an fsdp-sharded weight by
# gathering the activations' rows instead of the weight, and every fsdp device computes
# the whole batch (found by ``rmjax dry-run``; benchmarks/README.md, "Dry run").
ACTIVATION_RULES = (("batch", BATCH_AXES),)


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


def ensemble_size(mesh: Mesh) -> int:
  return int(mesh.shape[ENSEMBLE_AXIS])


def batch_sharding(mesh: Mesh, ndim: int, members: bool = False) -> NamedSharding:
  """Batch dimension over the data-parallel axes, the rest replicated; with
  ``members``, a leading member dimension over the ensemble axis comes first."""
  lead = (ENSEMBLE_AXIS, BATCH_AXES) if members else (BATCH_AXES,)
  return NamedSharding(mesh, PartitionSpec(*lead, *([None] * (ndim - len(lead)))))


def check_batch(batch, mesh: Mesh, members: bool = False) -> None:
  size, lead = data_parallel_size(mesh), 2 if members else 1
  for path, x in jax.tree_util.tree_leaves_with_path(batch):
    name = jax.tree_util.keystr(path)
    if np.ndim(x) < lead:
      raise ValueError(f"batch field {name} has shape {np.shape(x)}; every batch field "
                       f"needs {'[members, batch, ...]' if members else 'a leading batch'} "
                       "dimensions")
    if members and x.shape[0] % ensemble_size(mesh):
      raise ValueError(
          f"batch field {name} has {x.shape[0]} members, which the ensemble axis of size "
          f"{ensemble_size(mesh)} (mesh {dict(mesh.shape)}) does not divide")
    rows = x.shape[lead - 1]
    if rows % size:
      raise ValueError(
          f"batch field {name} has {rows} rows, which the data-parallel size {size} "
          f"(data x fsdp of mesh {dict(mesh.shape)}) does not divide")


def shard_batch(batch, mesh: Mesh, members: bool = False, process_local: bool = False):
  """Place a batch (pytree of arrays, batch-major, or member-major with ``members``) on
  the mesh.

  With several processes (``rmjax.parallel.distributed``) each process transfers only
  the rows of its own devices. ``process_local=False``: every process holds the same
  global batch (a deterministic source) and slices its rows out of it;
  ``process_local=True``: each process holds only its own rows, in process order (a
  pipeline sharded by process), and the global batch is their concatenation.
  """
  if process_local and jax.process_count() > 1:
    def local(x):
      return jax.make_array_from_process_local_data(
          batch_sharding(mesh, np.ndim(x), members), np.asarray(x))
    out = jax.tree.map(local, batch)
    check_batch(out, mesh, members)
    return out
  check_batch(batch, mesh, members)
  if jax.process_count() == 1:
    return jax.tree.map(
        lambda x: jax.device_put(x, batch_sharding(mesh, np.ndim(x), members)), batch)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(
          np.shape(x), batch_sharding(mesh, np.ndim(x), members), lambda index: x[index]),
      batch)


def to_host(tree):
  """NumPy copies of ``tree``'s global arrays on every process (gathered across
  processes when they span several)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


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


def on_mesh(fn, mesh: Mesh):
  """``fn`` with the activations it traces sharded by ``ACTIVATION_RULES`` on ``mesh``
  (unchanged on one device). Wrap what ``jax.jit`` traces."""
  if mesh.size == 1:
    return fn

  def constrain(x, axes):
    spec = logical_to_spec(axes, x.shape, mesh, ACTIVATION_RULES)
    if all(part is None for part in spec):  # rows the data axes don't divide: GSPMD's call
      return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with activations.activation_rule(constrain):
      return fn(*args, **kwargs)
  return traced


def compile_step(step_fn, mesh: Mesh, state_shardings, batch_ndims, *, donate=True,
                 members: bool = False):
  """Jit ``step_fn(state, batch) -> (state, metrics)`` once with explicit shardings.

  ``batch_ndims``: pytree matching the batch, giving each field's rank; ``members``:
  the batch is member-major (``batch_sharding``). Metrics come back replicated. The
  incoming state is donated (its buffers reused) by default.
  """
  batch_shardings = jax.tree.map(lambda n: batch_sharding(mesh, n, members), batch_ndims)
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(on_mesh(step_fn, mesh), in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, replicated),
                 donate_argnums=(0,) if donate else ())
