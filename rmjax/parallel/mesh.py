"""The device mesh: axes ``data``, ``fsdp`` and ``tensor`` built from config.

Axis types are **Auto** (the classic GSPMD behaviour), chosen deliberately over JAX's
new default, Explicit. With Explicit axes every contraction over a sharded dimension
must state its output sharding in the model code itself; our model is written once
for every mesh and for Hugging Face/GGUF weights, and the only shardings we want to
state are those of a step's inputs and outputs (parameters, optimizer state,
batches). With Auto axes XLA propagates everything in between from those, so the
model code never names a mesh axis and one device is just a 1x1x1 mesh.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the mesh axes; at most one may be -1 (fill with the remaining devices)."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.data, self.fsdp, self.tensor)


def resolve_shape(shape: tuple[int, ...], num_devices: int) -> tuple[int, ...]:
  """Fill a single -1 in ``shape`` so that the product equals ``num_devices``."""
  if len(shape) != len(AXES):
    raise ValueError(f"mesh shape {shape} must give one size for each axis {AXES}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {dict(zip(AXES, shape))}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape {dict(zip(AXES, shape))}: sizes must be positive or -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(
          f"mesh shape {dict(zip(AXES, shape))}: the fixed axes multiply to {known}, "
          f"which does not divide the {num_devices} available devices")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  elif known != num_devices:
    raise ValueError(
        f"mesh shape {dict(zip(AXES, shape))} needs {known} devices but "
        f"{num_devices} are available")
  return shape


def make_mesh(config: MeshConfig | tuple[int, int, int] = MeshConfig(),
              devices: list | None = None) -> Mesh:
  """A mesh over ``devices`` (default: all) with Auto axis types."""
  shape = config.shape if isinstance(config, MeshConfig) else tuple(config)
  devices = jax.devices() if devices is None else devices
  shape = resolve_shape(shape, len(devices))
  if devices == jax.devices():
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))
  return Mesh(np.asarray(devices).reshape(shape), AXES,
              axis_types=(AxisType.Auto,) * len(AXES))
