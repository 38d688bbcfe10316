"""Mesh construction, the logical-axis rules and batch placement (8 host devices)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from rmjax.models import config as C
from rmjax.models.transformer import Transformer
from rmjax.parallel import MeshConfig, make_mesh, shard_batch, tree_shardings
from rmjax.parallel.mesh import AXES, resolve_shape
from rmjax.parallel.rules import logical_to_spec
from rmjax.parallel.sharding import batch_sharding, data_parallel_size


def _numbers(message):
  return {int(n) for n in re.findall(r"\d+", message)}


def _shape(mesh):
  """(data, fsdp, tensor) sizes; the ensemble axis is checked on its own."""
  return tuple(mesh.shape[a] for a in ("data", "fsdp", "tensor"))


@pytest.mark.parametrize("shape, expected", [
    ((-1, 1, 1), (8, 1, 1)),
    ((-1, 2, 1), (4, 2, 1)),
    ((2, -1, 2), (2, 2, 2)),
    ((1, 1, -1), (1, 1, 8)),
    ((2, 4, 1), (2, 4, 1)),
])
def test_fill_one_axis(eight_devices, shape, expected):
  mesh = make_mesh(shape)
  assert _shape(mesh) == expected
  assert mesh.axis_names == AXES
  assert all(t == AxisType.Auto for t in mesh.axis_types)


def test_mesh_config_defaults_to_pure_data_parallel(eight_devices):
  assert _shape(make_mesh()) == (8, 1, 1)
  assert make_mesh().shape["ensemble"] == 1
  assert _shape(make_mesh(MeshConfig(data=2, fsdp=-1))) == (2, 4, 1)


def test_subset_of_devices(eight_devices):
  mesh = make_mesh((1, 1, 1), devices=eight_devices[:1])
  assert mesh.devices.size == 1 and mesh.devices.flat[0] == eight_devices[0]
  mesh = make_mesh((-1, 2, 1), devices=eight_devices[:4])
  assert _shape(mesh) == (2, 2, 1)
  assert set(mesh.devices.flat) == set(eight_devices[:4])


@pytest.mark.parametrize("shape, needed", [((3, 1, 1), 3), ((2, 2, 1), 4), ((4, 4, 1), 16)])
def test_wrong_device_count_names_both_numbers(eight_devices, shape, needed):
  with pytest.raises(ValueError) as info:
    make_mesh(shape)
  assert {needed, 8} <= _numbers(str(info.value)), info.value


def test_fill_that_does_not_divide_names_both_numbers(eight_devices):
  with pytest.raises(ValueError) as info:
    make_mesh((3, -1, 1))
  assert {3, 8} <= _numbers(str(info.value))
  with pytest.raises(ValueError) as info:
    make_mesh((8, 1, 1), devices=eight_devices[:4])
  assert {8, 4} <= _numbers(str(info.value))


@pytest.mark.parametrize("shape", [(-1, -1, 1), (0, 8, 1), (-2, 4, 1), (8, 1)])
def test_malformed_shapes(shape):
  with pytest.raises(ValueError):
    resolve_shape(shape, 8)


def test_batch_not_dividing_data_parallel_size(eight_devices):
  mesh = make_mesh((2, 2, 2))
  assert data_parallel_size(mesh) == 4
  with pytest.raises(ValueError) as info:
    shard_batch({"tokens": np.ones((6, 3), np.int32)}, mesh)
  message = str(info.value)
  assert {6, 4} <= _numbers(message) and "tokens" in message
  with pytest.raises(ValueError) as info:
    shard_batch({"a": np.ones((8, 3)), "b": np.ones((10,))}, make_mesh((8, 1, 1)))
  assert {10, 8} <= _numbers(str(info.value)) and "'b'" in str(info.value)


def test_shard_batch_places_rows_over_data_axes(eight_devices):
  mesh = make_mesh((2, 2, 2))
  batch = {"tokens": np.arange(24).reshape(8, 3), "mask": np.ones((8,), bool)}
  placed = shard_batch(batch, mesh)
  assert placed["tokens"].sharding == batch_sharding(mesh, 2)
  assert placed["tokens"].sharding.spec == P(("data", "fsdp"), None)
  assert placed["mask"].sharding.spec == P(("data", "fsdp"))
  np.testing.assert_array_equal(placed["tokens"], batch["tokens"])
  for shard in placed["tokens"].addressable_shards:
    assert shard.data.shape == (2, 3)  # 8 rows over data x fsdp = 4


def test_logical_to_spec(eight_devices):
  mesh = make_mesh((1, 2, 4))
  spec = lambda axes, shape: logical_to_spec(axes, shape, mesh)
  assert spec(("embed", "heads", "head_dim"), (64, 4, 16)) == P("fsdp", "tensor", None)
  # A mesh axis that does not divide the dimension is dropped (replicated instead).
  assert spec(("embed", "kv_heads", "head_dim"), (64, 3, 16)) == P("fsdp", None, None)
  assert spec(("embed",), (63,)) == P(None)
  # Unknown and absent names are replicated; each mesh axis is used at most once.
  assert spec(("unknown", None), (8, 8)) == P(None, None)
  assert spec(("vocab", "mlp"), (128, 128)) == P("tensor", None)
  # Size-1 axes are skipped; the batch takes both data-parallel axes when they divide.
  assert spec(("batch", "length"), (8, 5)) == P("fsdp", None)
  wide = make_mesh((2, 4, 1))
  assert logical_to_spec(("batch",), (8,), wide) == P(("data", "fsdp"))
  assert logical_to_spec(("batch",), (6,), wide) == P("data")
  assert logical_to_spec(("embed",), (64,), make_mesh((8, 1, 1))) == P(None)


def test_tree_shardings_follow_parameter_axes(eight_devices):
  mesh = make_mesh((2, 2, 2))
  model = nnx.eval_shape(lambda: Transformer(C.tiny_llama(num_reward_heads=1),
                                             rngs=nnx.Rngs(0)))
  state = nnx.state(model)
  shardings = tree_shardings(state, mesh)
  is_var = lambda x: isinstance(x, nnx.Variable)
  variables = jax.tree.leaves(state, is_leaf=is_var)
  specs = jax.tree.leaves(shardings, is_leaf=is_var)
  assert len(variables) == len(specs) > 10
  for var, sharding in zip(variables, specs):
    axes = var.get_metadata()["axes"]
    assert sharding.get_value().spec == logical_to_spec(axes, var.shape, mesh), axes
    if "embed" in axes:  # d_model 64 divides over fsdp=2
      assert sharding.get_value().spec[axes.index("embed")] == "fsdp"
  assert shardings["embed"].get_value().spec == P("tensor", "fsdp")  # vocab, embed
  assert shardings["final_norm"]["scale"].get_value().spec == P(None)
  assert shardings["reward_head"].get_value().spec == P("fsdp", None)
  # Non-variable leaves (step counters, scalars) are replicated.
  assert tree_shardings({"step": jnp.zeros(())}, mesh)["step"].spec == P()


def test_ensemble_axis_is_outermost_and_optional(eight_devices):
  mesh = make_mesh(MeshConfig(data=2, ensemble=-1))
  assert AXES[0] == "ensemble" and mesh.shape["ensemble"] == 4 and _shape(mesh) == (2, 1, 1)
  # Members are the outermost axis: each member group is a contiguous block of devices.
  groups = [sorted(d.id for d in mesh.devices[i].flat) for i in range(4)]
  assert groups == [[0, 1], [2, 3], [4, 5], [6, 7]]
  assert make_mesh((2, 1, 1, 4)).shape == mesh.shape
  with pytest.raises(ValueError) as info:
    make_mesh((2, 1, 1, 3))
  assert {6, 8} <= _numbers(str(info.value))
