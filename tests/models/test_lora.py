"""LoRA adapters: the adapted model equals its base at initialisation, the update is
(alpha / r) x A B, merging folds it into W exactly, adapters shard like their projection,
and a pretrained backbone loads with fresh adapters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rmjax import parallel
from rmjax.models import config, hf_io, lora
from rmjax.models.layers import LoRA
from rmjax.models.transformer import Transformer, last_token_index

LLAMA = config.tiny_llama(d_model=32, n_layers=1, vocab_size=64, d_ff=64, num_reward_heads=2)
GPT2 = config.tiny_gpt2(d_model=32, n_layers=1, vocab_size=64, d_ff=64, max_seq_len=16,
                        num_reward_heads=1)


def _tokens(cfg, batch=2, seq=10):
  tokens = jax.random.randint(jax.random.key(1), (batch, seq), 0, cfg.vocab_size)
  mask = jnp.arange(seq)[None] < jnp.array([[seq], [seq - 3]])
  return tokens, mask


@functools.cache
def _initial_state(cfg, seed):
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed))))
  return graphdef, jax.jit(lambda: nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed))))()


def _build(cfg, seed=0):
  """``Transformer(cfg, rngs=nnx.Rngs(seed))``, initialised in one compiled program (and
  once per test session: tests must not change it in place)."""
  return nnx.merge(*_initial_state(cfg, seed))


@nnx.jit
def _outputs(model, tokens, mask):
  """(hidden states [B, S, D], rewards read through ``read_at`` [B, K])."""
  hidden, _ = model(tokens, mask)
  read, _ = model(tokens, mask, read_at=last_token_index(mask)[:, None])
  return hidden, model.reward_scores(read[:, 0])


def _randomised_adapters(model, seed=3):
  """A copy of ``model`` whose adapters (B included) are random, so they change it."""
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(model)
  state = jax.tree.map(
      lambda x: (x.replace(jnp.asarray(0.1 * rng.normal(size=x.shape), x.dtype))
                 if isinstance(x, nnx.LoRAParam) else x),
      state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


def test_config_validates_lora_fields():
  assert LLAMA.replace(lora_rank=4, lora_targets="qkv, down").lora_target_names == (
      "qkv", "down")
  with pytest.raises(ValueError, match="lora_rank=-1"):
    LLAMA.replace(lora_rank=-1)
  with pytest.raises(ValueError, match="lora_targets='qkv,mlp'"):
    LLAMA.replace(lora_rank=4, lora_targets="qkv,mlp")
  with pytest.raises(ValueError, match="lora_alpha=0"):
    LLAMA.replace(lora_rank=4, lora_alpha=0)


@pytest.mark.parametrize("cfg", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_adapted_model_equals_its_base_at_init_and_its_merge_after(cfg):
  base = _build(cfg)
  adapted = _build(cfg.replace(lora_rank=4))
  # Adapters are drawn last: the base and heads are bit-identical to the plain model's.
  jax.tree.map(np.testing.assert_array_equal, nnx.state(base),
               nnx.state(adapted, nnx.Not(nnx.LoRAParam)))
  n = cfg.n_layers * len(config.LORA_TARGETS)
  assert len(jax.tree.leaves(nnx.state(adapted, nnx.LoRAParam))) == 2 * n
  tokens, mask = _tokens(cfg)
  out_base = _outputs(base, tokens, mask)
  for a, b in zip(out_base, _outputs(adapted, tokens, mask)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  # Trained (here: random) adapters change the model; merging folds them in exactly.
  adapted = _randomised_adapters(adapted)
  plain = lora.merged(adapted)
  assert plain.cfg.lora_rank == 0 and not lora.has_adapters(nnx.state(plain))
  out_adapted, out_merged = _outputs(adapted, tokens, mask), _outputs(plain, tokens, mask)
  assert np.abs(out_adapted[0] - out_base[0]).max() > 1e-2
  for a, b in zip(out_adapted, out_merged):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_lora_update_is_scaled_x_a_b():
  rngs = nnx.Rngs(0)
  cfg = LLAMA.replace(lora_rank=3, lora_alpha=6.0)
  w = nnx.Param(jnp.zeros((4, 5, 7)), axes=("heads", "head_dim", "embed"))
  layer = LoRA(cfg, w, 2, rngs)
  assert layer.a.shape == (4, 5, 3) and layer.b.shape == (3, 7)
  assert layer.a.get_metadata()["axes"] == ("heads", "head_dim", "lora_rank")
  assert layer.b.get_metadata()["axes"] == ("lora_rank", "embed")
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(4, 5, 3)), rng.normal(size=(3, 7))
  layer.a[...], layer.b[...] = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  x = rng.normal(size=(2, 6, 4, 5))
  want = 2.0 * (x.reshape(2, 6, 20) @ a.reshape(20, 3)) @ b
  np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32), (slice(2, 5),)),
                             want[..., 2:5], rtol=1e-5, atol=1e-5)


def test_adapt_puts_fresh_adapters_on_any_model():
  base = _build(LLAMA)
  adapted = lora.adapt(base, 2, alpha=4.0, targets="qkv,down", seed=5)
  assert (adapted.cfg.lora_rank, adapted.cfg.lora_alpha) == (2, 4.0)
  assert adapted.blocks[0].attn.o_lora is None and adapted.blocks[0].mlp.up_lora is None
  a = adapted.blocks[0].mlp.down_lora.a[...]
  assert np.std(a) > 0.5 / np.sqrt(a.shape[0])  # drawn, B left at zero
  np.testing.assert_array_equal(adapted.blocks[0].mlp.down_lora.b[...], 0)
  tokens, mask = _tokens(LLAMA)
  for a, b in zip(_outputs(base, tokens, mask), _outputs(adapted, tokens, mask)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  # Adapting an adapted model merges its adapters first.
  trained = _randomised_adapters(adapted)
  again = lora.adapt(trained, 4)
  for a, b in zip(_outputs(trained, tokens, mask), _outputs(again, tokens, mask)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_trainable_mask_and_grad_norm_see_adapters_and_heads_only():
  base = _build(LLAMA)
  assert lora.trainable_mask(nnx.state(base)) is None
  adapted = _build(LLAMA.replace(lora_rank=4))
  params = nnx.state(adapted)
  mask = lora.trainable_mask(params)
  assert sum(jax.tree.leaves(mask)) == 2 * 4 + 1  # a and b of 4 targets, the reward head
  grads = jax.tree.map(jnp.ones_like, params)
  adapters = jax.tree.leaves(nnx.state(adapted, nnx.LoRAParam))
  want = np.sqrt(sum(x.size for x in adapters) + adapted.reward_head.size)
  np.testing.assert_allclose(lora.grad_norm(grads), want, rtol=1e-6)
  np.testing.assert_allclose(lora.grad_norm(nnx.state(base)), optax.tree.norm(nnx.state(base)))
  zeroed = lora.frozen_zeroed(grads)  # MetaRM's lookahead moves adapters and heads only
  np.testing.assert_allclose(optax.tree.norm(zeroed), want, rtol=1e-6)
  np.testing.assert_allclose(optax.tree.norm(lora.frozen_zeroed(nnx.state(base))),
                             optax.tree.norm(nnx.state(base)))  # no adapters: all of it moves
  np.testing.assert_array_equal(lora.frozen_zeroed(grads)["reward_head"][...], 1.0)


def test_parameters_beside_the_model_train_with_its_adapters_and_heads():
  """A params dict holding the model's state and a loss's own parameter (SwAV's
  prototypes): only the base's parts are frozen, whatever their depth in the tree."""
  params = {"model": nnx.state(_build(LLAMA.replace(lora_rank=4))),
            "prototypes": nnx.Param(jnp.ones((32, 3)))}
  mask = lora.trainable_mask(params)
  assert mask["prototypes"] and mask["model"]["reward_head"]
  assert not mask["model"]["embed"] and not mask["model"]["final_norm"]["scale"]
  assert not mask["model"]["blocks"][0]["attn"]["qkv"]
  assert mask["model"]["blocks"][0]["attn"]["qkv_lora"]["a"]
  assert sum(jax.tree.leaves(mask)) == 2 * 4 + 1 + 1  # adapters, the head, the prototypes
  grads = jax.tree.map(jnp.ones_like, params)
  np.testing.assert_array_equal(lora.frozen_zeroed(grads)["prototypes"][...], 1.0)
  np.testing.assert_array_equal(lora.frozen_zeroed(grads)["model"]["embed"][...], 0.0)


def test_adapters_shard_like_their_projection(eight_devices):
  mesh = parallel.make_mesh((2, 2, 2), devices=eight_devices)
  model = parallel.init_sharded(
      lambda: Transformer(LLAMA.replace(lora_rank=4), rngs=nnx.Rngs(0)), mesh)
  specs = lambda x: tuple(x.sharding.spec)
  attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
  assert specs(attn.qkv_lora.a[...]) == ("fsdp", None)
  assert specs(attn.qkv_lora.b[...]) == (None, "tensor", None, None)
  assert specs(attn.o_lora.a[...]) == ("tensor", None, None)
  assert specs(attn.o_lora.b[...]) == (None, "fsdp")
  assert specs(mlp.up_lora.b[...]) == (None, None, "tensor")
  assert specs(mlp.down_lora.a[...]) == ("tensor", None)
  # Merging works on the sharded model: W + (alpha / r) A B.
  adapter = attn.o_lora
  adapter.b[...] = jnp.linspace(-1, 1, adapter.b.size).reshape(adapter.b.shape)
  want = np.asarray(attn.o[...]) + 4.0 * np.einsum("hdr,re->hde", adapter.a[...], adapter.b[...])
  np.testing.assert_allclose(lora.merged(model).blocks[0].attn.o[...], want, atol=1e-6)


def test_pretrained_backbone_loads_with_fresh_adapters(tmp_path):
  lm = _build(LLAMA.replace(num_reward_heads=0))
  hf_io.save_hf(lm, tmp_path)
  plain = hf_io.load_hf(tmp_path, num_reward_heads=1, seed=3)
  adapted = hf_io.load_hf(tmp_path, num_reward_heads=1, seed=3, lora_rank=4)
  assert lora.has_adapters(nnx.state(adapted))
  a = adapted.blocks[0].attn.qkv_lora.a[...]
  assert np.std(a) > 0.5 / np.sqrt(a.shape[0])  # drawn, not left at zero
  np.testing.assert_array_equal(adapted.blocks[0].attn.qkv_lora.b[...], 0)
  # The base is the checkpoint's, the heads as without adapters (same seed).
  jax.tree.map(np.testing.assert_array_equal, nnx.state(plain),
               nnx.state(adapted, nnx.Not(nnx.LoRAParam)))


def test_swiglu_gradients_with_a_lora_update_match_autodiff():
  from rmjax.models.transformer import _swiglu
  x, w, extra = (jax.random.normal(jax.random.key(i), shape)
                 for i, shape in enumerate([(2, 5, 8), (8, 2, 6), (2, 5, 2, 6)]))

  def reference(x, w, extra):
    both = jnp.einsum("bse,etf->bstf", x, w) + extra
    return jax.nn.silu(both[:, :, 0]) * both[:, :, 1]

  loss = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), (0, 1, 2)))
  for a, b in zip(loss(reference)(x, w, extra), loss(_swiglu)(x, w, extra), strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
