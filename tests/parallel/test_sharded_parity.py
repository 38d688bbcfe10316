"""The same step gives the same numbers on a 1-device and on 8-device meshes.

A tiny Llama with GQA (4 query heads, 2 KV heads, so a tensor axis of 2 divides both)
is built directly in its shards (``init_sharded``) on each mesh (data, fsdp, tensor), and
compared with a single-device reference: forward outputs, gradients of a Bradley-Terry
loss, the losses of five AdamW steps through ``compile_step``, and sampling.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rmjax.models.config import ModelConfig
from rmjax.models.sampler import SamplingConfig, generate
from rmjax.models.transformer import Transformer
from rmjax.parallel import (
  compile_step,
  init_sharded,
  make_mesh,
  shard_batch,
  shard_model,
  tree_shardings,
)

CFG = ModelConfig(family="llama", vocab_size=128, d_model=64, n_layers=2, n_heads=4,
                  n_kv_heads=2, d_ff=128, max_seq_len=64, num_reward_heads=1)
MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)]
MESH_IDS = ["x".join(map(str, m)) for m in MESHES]
BATCH, SEQ, STEPS = 8, 16, 5
TX = optax.adamw(3e-3, weight_decay=0.01)


@pytest.fixture(autouse=True)
def _needs_eight(eight_devices):
  pass


def _make_model():
  return Transformer(CFG, rngs=nnx.Rngs(0))


@functools.cache
def _mesh(shape):
  devices = jax.devices()[:1] if shape == (1, 1, 1) else None
  return make_mesh(shape, devices=devices)


@functools.cache
def _sharded(shape):
  """(graphdef, params) built directly in their shards on the mesh."""
  return nnx.split(init_sharded(_make_model, _mesh(shape)))


@functools.cache
def _reference():
  """(graphdef, params) of the same model on one device, no mesh."""
  return nnx.split(_make_model())


def _rows(rng, lengths, width=SEQ):
  """[BATCH, width] tokens and mask; even rows right-padded, odd rows left-padded."""
  tokens = rng.integers(1, CFG.vocab_size, (BATCH, width)).astype(np.int32)
  mask = np.zeros((BATCH, width), bool)
  for row, n in enumerate(lengths):
    if row % 2:
      mask[row, width - n:] = True
    else:
      mask[row, :n] = True
  return tokens, mask


@functools.cache
def _batch():
  rng = np.random.default_rng(0)
  chosen, chosen_mask = _rows(rng, rng.integers(4, SEQ + 1, BATCH))
  rejected, rejected_mask = _rows(rng, rng.integers(4, SEQ + 1, BATCH))
  return {"chosen": chosen, "chosen_mask": chosen_mask,
          "rejected": rejected, "rejected_mask": rejected_mask}


def _loss(params, graphdef, batch):
  """Bradley-Terry: mean of -log sigmoid(r_chosen - r_rejected), one forward for both."""
  model = nnx.merge(graphdef, params)
  tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
  mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
  hidden, _ = model(tokens, mask)
  rewards = model.rewards(hidden, mask)[:, 0]
  chosen, rejected = rewards[:BATCH], rewards[BATCH:]
  loss = -jnp.mean(jax.nn.log_sigmoid(chosen - rejected))
  return loss, {"chosen": chosen, "rejected": rejected,
                "logits": model.logits(hidden[:BATCH])}


@functools.partial(jax.jit, static_argnums=0)
def _forward_and_grad(graphdef, params, batch):
  (loss, outputs), grads = jax.value_and_grad(_loss, has_aux=True)(params, graphdef, batch)
  return loss, outputs, grads


def _train_step(graphdef):
  def step(state, batch):
    params, opt_state = state
    (loss, _), grads = jax.value_and_grad(_loss, has_aux=True)(params, graphdef, batch)
    updates, opt_state = TX.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), {"loss": loss}
  return step


def _assert_trees_close(actual, expected, **tol):
  flat_expected = dict(jax.tree_util.tree_leaves_with_path(expected))
  flat_actual = jax.tree_util.tree_leaves_with_path(actual)
  assert len(flat_actual) == len(flat_expected)
  for path, value in flat_actual:
    np.testing.assert_allclose(np.asarray(value), np.asarray(flat_expected[path]), **tol,
                               err_msg=jax.tree_util.keystr(path))


@functools.cache
def _reference_forward():
  graphdef, params = _reference()
  return jax.device_get(_forward_and_grad(graphdef, params, _batch()))


@functools.cache
def _reference_losses():
  graphdef, params = _reference()
  step = jax.jit(_train_step(graphdef))
  state, losses = (params, TX.init(params)), []
  for _ in range(STEPS):
    state, metrics = step(state, _batch())
    losses.append(float(metrics["loss"]))
  return np.array(losses)


@pytest.mark.parametrize("shape", MESHES, ids=MESH_IDS)
def test_sharded_init_equals_single_device_init(shape):
  _, params = _sharded(shape)
  _assert_trees_close(params, _reference()[1], rtol=1e-6, atol=1e-9)
  mesh = _mesh(shape)
  for value in jax.tree.leaves(params):
    assert value.sharding.mesh.shape == mesh.shape


@pytest.mark.parametrize("shape", MESHES, ids=MESH_IDS)
def test_forward_and_gradients_match_single_device(shape):
  graphdef, params = _sharded(shape)
  batch = shard_batch(_batch(), _mesh(shape))
  loss, outputs, grads = _forward_and_grad(graphdef, params, batch)
  ref_loss, ref_outputs, ref_grads = _reference_forward()
  tol = dict(rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss, ref_loss, **tol)
  _assert_trees_close(outputs, ref_outputs, **tol)
  _assert_trees_close(grads, ref_grads, **tol)
  # The reference is not trivial: rewards differ per row and every parameter the loss
  # reads (all but the LM head, whose logits are only an output here) has a gradient.
  assert np.std(ref_outputs["chosen"]) > 1e-3
  for path, g in jax.tree_util.tree_leaves_with_path(ref_grads):
    name = jax.tree_util.keystr(path)
    assert np.any(g != 0) != ("lm_head" in name), name


@pytest.mark.parametrize("shape", MESHES, ids=MESH_IDS)
def test_adamw_steps_match_single_device(shape):
  mesh = _mesh(shape)
  graphdef, params = _sharded(shape)
  params = jax.tree.map(jnp.copy, params)  # the step donates its state
  state = (params, TX.init(params))
  state_shardings = tree_shardings(state, mesh)
  state = jax.device_put(state, state_shardings)
  step = compile_step(_train_step(graphdef), mesh, state_shardings,
                      {name: 2 for name in _batch()})
  batch = shard_batch(_batch(), mesh)
  losses = []
  for _ in range(STEPS):
    old = state
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old[0]))  # donated
  # The state keeps its shardings across steps.
  for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(state_shardings),
                            strict=True):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
  reference = _reference_losses()
  assert abs(reference[-1] - reference[0]) > 1e-3  # training moves the loss
  np.testing.assert_allclose(losses, reference, rtol=1e-4)


def _prompts():
  """[BATCH, 8] prompts of 1 to 8 real tokens, left- and right-padded."""
  rng = np.random.default_rng(1)
  return _rows(rng, rng.integers(1, 9, BATCH), width=8)


@functools.cache
def _reference_sample(sampling):
  graphdef, params = _reference()
  tokens, mask = _prompts()
  return jax.device_get(generate(nnx.merge(graphdef, params), tokens, mask,
                                 jax.random.key(7), sampling))


GREEDY = SamplingConfig(max_new_tokens=6, greedy=True)
SAMPLED = SamplingConfig(max_new_tokens=6, temperature=0.8, top_k=20)


@pytest.mark.parametrize("shape", MESHES, ids=MESH_IDS)
def test_greedy_sampling_with_a_sharded_batch(shape):
  _check_sampling(shape, GREEDY)


def test_random_sampling_with_a_sharded_batch():
  """The noise is drawn for the whole batch, so it does not depend on the sharding."""
  _check_sampling((2, 2, 2), SAMPLED)


def _check_sampling(shape, sampling):
  mesh = _mesh(shape)
  model = nnx.merge(*_sharded(shape))
  tokens, mask = _prompts()
  placed = shard_batch({"tokens": tokens, "mask": mask}, mesh)
  out = generate(model, placed["tokens"], placed["mask"], jax.random.key(7), sampling)
  ref = _reference_sample(sampling)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.mask, ref.mask)
  np.testing.assert_array_equal(out.prompt_tokens, ref.prompt_tokens)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)


def test_shard_model_places_an_existing_model():
  mesh = _mesh((2, 2, 2))
  graphdef, params = nnx.split(shard_model(nnx.merge(*_reference()), mesh))
  _assert_trees_close(params, _reference()[1], rtol=1e-6, atol=1e-9)
  expected = tree_shardings(params, mesh)
  for leaf, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)


def _bytes_per_device(tree):
  """{device: bytes it holds of tree}, and (sharded, replicated) totals of full arrays."""
  held, sharded, replicated = {}, 0, 0
  for leaf in jax.tree.leaves(tree):
    if all(axis is None for axis in leaf.sharding.spec):
      replicated += leaf.nbytes
    else:
      sharded += leaf.nbytes
    for shard in leaf.addressable_shards:
      held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
  return held, sharded, replicated


def test_fsdp_holds_an_eighth_of_each_sharded_parameter():
  mesh = _mesh((1, 8, 1))
  _, params = nnx.split(init_sharded(_make_model, mesh))
  opt_state = jax.device_put(TX.init(params), tree_shardings(TX.init(params), mesh))
  for tree in (params, opt_state):
    held, sharded, replicated = _bytes_per_device(tree)
    assert len(held) == 8
    assert sharded > 10 * replicated  # nearly everything is sharded
    for device, nbytes in held.items():
      assert nbytes <= sharded / 8 + replicated, (device, nbytes, sharded, replicated)
  for leaf in jax.tree.leaves(params):
    if leaf.ndim >= 2:  # every matrix has an "embed" dimension of 64 = 8 x 8
      assert "fsdp" in leaf.sharding.spec, leaf.shape
