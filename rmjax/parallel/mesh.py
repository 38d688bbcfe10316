"""The device mesh: axes ``ensemble``, ``data``, ``fsdp`` and ``tensor`` built from config.

Axis types are **Auto** (the classic GSPMD behaviour), chosen deliberately over JAX's
new default, Explicit. With Explicit axes every contraction over a sharded dimension
must state its output sharding in the model code itself; our model is written once
for every mesh and for Hugging Face/GGUF weights, and the only shardings we want to
state are those of a step's inputs and outputs (parameters, optimizer state,
batches). With Auto axes XLA propagates everything in between from those, so the
model code never names a mesh axis and one device is just a 1x1x1x1 mesh.

``ensemble`` (size 1 unless asked for) spreads the members of a reward-model
ensemble (``rmjax/rm/members.py``) over devices. It is its own axis rather than
a reuse of ``data`` so that each member can still be data-parallel inside its group
(ensemble=4, data=2 on eight devices), and it is the *outermost* axis because members
never talk to each other during a step (own parameters, optimizer and batch; only
scalar metrics are gathered): it can sit on the slowest links (across hosts or
slices) and leave the fast ones to data, fsdp and tensor.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("ensemble", "data", "fsdp", "tensor")  # the mesh's order: outermost first
# The order of sizes in MeshConfig and in shape tuples: ensemble last and optional, so
# (data, fsdp, tensor) tuples keep their meaning.
CONFIG_AXES = ("data", "fsdp", "tensor", "ensemble")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the mesh axes; at most one may be -1 (fill with the remaining devices)."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  ensemble: int = 1

  @property
  def shape(self) -> tuple[int, int, int, int]:
    """Sizes in ``CONFIG_AXES`` order."""
    return (self.data, self.fsdp, self.tensor, self.ensemble)


def resolve_shape(shape: tuple[int, ...], num_devices: int) -> tuple[int, ...]:
  """Fill a single -1 in ``shape`` so that the product equals ``num_devices``.

  ``shape``: sizes in ``CONFIG_AXES`` order; a 3-tuple means ensemble = 1.
  Returns all four sizes in that order.
  """
  if len(shape) == len(CONFIG_AXES) - 1:
    shape = (*shape, 1)
  if len(shape) != len(CONFIG_AXES):
    raise ValueError(f"mesh shape {shape} must give one size for each axis {CONFIG_AXES} "
                     "(ensemble may be left out)")
  named = dict(zip(CONFIG_AXES, shape))
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {named}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape {named}: sizes must be positive or -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(
          f"mesh shape {named}: the fixed axes multiply to {known}, "
          f"which does not divide the {num_devices} available devices")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  elif known != num_devices:
    raise ValueError(
        f"mesh shape {named} needs {known} devices but "
        f"{num_devices} are available")
  return shape


def make_mesh(config: MeshConfig | tuple[int, ...] = MeshConfig(),
              devices: list | None = None) -> Mesh:
  """A mesh over ``devices`` (default: all) with Auto axis types and axes ``AXES``.

  ``config``: a MeshConfig, or sizes in ``CONFIG_AXES`` order (ensemble optional).
  """
  shape = config.shape if isinstance(config, MeshConfig) else tuple(config)
  devices = jax.devices() if devices is None else devices
  sizes = dict(zip(CONFIG_AXES, resolve_shape(shape, len(devices))))
  shape = tuple(sizes[a] for a in AXES)
  if devices == jax.devices():
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))
  return Mesh(np.asarray(devices).reshape(shape), AXES,
              axis_types=(AxisType.Auto,) * len(AXES))
