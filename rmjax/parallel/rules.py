"""The one table that maps logical axis names to mesh axes.

Parameters name their dimensions logically (``rmjax/models/layers.py``); batches use
"batch" and "length". The stacked members of a reward-model ensemble
(``rmjax/rm/members.py``) add a leading "ensemble" dimension to every parameter and
to their batches; it goes to the mesh's own ``ensemble`` axis (``mesh.py`` says why that
axis exists instead of reusing ``data``), so members keep their usual sharding inside it.

A name missing from the table is replicated. A mesh axis is used at most once per
array, and an axis whose size does not divide the dimension is dropped for that array
(the dimension is replicated instead of failing): SmolLM2's 3 KV heads on a tensor axis
of 2 stay whole, for example. (The trainer refuses an ensemble.k that the ensemble axis
does not divide, rather than let members be silently replicated.)
"""

from __future__ import annotations

from jax.sharding import Mesh, PartitionSpec

# Ordered: the first rule that names a logical axis wins.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("ensemble", "ensemble"),
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("qkv", None),
    ("gate_up", None),
    ("positions", None),
    ("norm", None),
    ("reward_heads", None),
)


def logical_to_spec(axes, shape, mesh: Mesh, rules=LOGICAL_RULES) -> PartitionSpec:
  """PartitionSpec for an array of ``shape`` whose dimensions are named ``axes``."""
  table = {}
  for name, target in rules:
    table.setdefault(name, target)
  used: set[str] = set()
  spec = []
  for name, size in zip(axes, shape):
    target = table.get(name) if name is not None else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    kept = []
    for axis in targets:
      if axis in used or mesh.shape[axis] == 1:
        continue
      width = mesh.shape[axis] * _product(mesh.shape[a] for a in kept)
      if size % width == 0:
        kept.append(axis)
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*spec)


def _product(values) -> int:
  out = 1
  for v in values:
    out *= v
  return out
