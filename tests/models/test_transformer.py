"""The decoder and its heads: shapes, padding, KV cache, dropout, precision, remat, RoPE."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmjax.models import config as C
from rmjax.models import kv_cache as kvc
from rmjax.models.layers import rope_inverse_frequencies
from rmjax.models.transformer import Transformer, last_token_index

FAMILIES = {"llama": C.tiny_llama, "gpt2": C.tiny_gpt2}
LLAMA3 = (("rope_type", "llama3"), ("factor", 8.0), ("low_freq_factor", 1.0),
          ("high_freq_factor", 4.0), ("original_max_position_embeddings", 64))


def _model(cfg, seed=0):
  return Transformer(cfg, rngs=nnx.Rngs(seed))


@functools.partial(jax.jit, static_argnums=0)
def _jit_forward(graphdef, state, tokens, mask, positions, cache, dropout_key):
  model = nnx.merge(graphdef, state)
  hidden, cache = model(tokens, mask, positions=positions, cache=cache,
                        dropout_key=dropout_key)
  out = {"hidden": hidden, "cache": cache}
  if model.lm_head is not None or model.cfg.tie_embeddings:
    out["logits"] = model.logits(hidden)
  if model.reward_head is not None:
    out["rewards"] = model.rewards(hidden, jnp.ones(tokens.shape, bool) if mask is None
                                   else mask)
  if model.value_head is not None:
    out["values"] = model.values(hidden)
  return out


def _run(model, tokens, mask=None, *, positions=None, cache=None, dropout_key=None):
  """One jitted forward (eager dispatch is slow on 8 host devices): hidden, cache, heads."""
  graphdef, state = nnx.split(model)
  return _jit_forward(graphdef, state, tokens, mask, positions, cache, dropout_key)


def _fwd(model, *args, **kwargs):
  out = _run(model, *args, **kwargs)
  return out["hidden"], out["cache"]


def _tokens(shape, seed=1, vocab=128):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


def _close(a, b, **tol):
  np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_shapes_and_dtypes(family):
  cfg = FAMILIES[family](num_reward_heads=3, value_head=True)
  model = _model(cfg)
  tokens = _tokens((2, 7))
  out = _run(model, tokens)
  hidden, logits, rewards, values = (out[k] for k in ("hidden", "logits", "rewards", "values"))
  assert out["cache"] is None
  assert hidden.shape == (2, 7, cfg.d_model) and hidden.dtype == jnp.float32
  assert logits.shape == (2, 7, cfg.vocab_size) and logits.dtype == jnp.float32
  assert rewards.shape == (2, 3) and rewards.dtype == jnp.float32
  assert values.shape == (2, 7) and values.dtype == jnp.float32
  for x in (hidden, logits, rewards, values):
    assert np.all(np.isfinite(np.asarray(x)))


def test_k_reward_heads_read_their_own_columns():
  model = _model(C.tiny_llama(num_reward_heads=4))
  tokens = _tokens((3, 6))
  mask = jnp.ones((3, 6), bool)
  out = _run(model, tokens, mask)
  hidden, rewards = out["hidden"], out["rewards"]
  assert rewards.shape == (3, 4)
  expected = np.asarray(hidden[:, -1]) @ np.asarray(model.reward_head[...])
  _close(rewards, expected, rtol=1e-5, atol=1e-6)
  assert np.unique(np.round(np.asarray(rewards), 6), axis=1).shape[1] == 4  # heads differ


def test_missing_heads_raise():
  model = _model(C.tiny_llama(lm_head=False, tie_embeddings=False))
  hidden, _ = _fwd(model, _tokens((1, 3)))
  with pytest.raises(ValueError, match="lm_head"):
    model.logits(hidden)
  with pytest.raises(ValueError, match="num_reward_heads"):
    model.rewards(hidden, jnp.ones((1, 3), bool))
  with pytest.raises(ValueError, match="value_head"):
    model.values(hidden)
  tied = _model(C.tiny_llama(lm_head=False, tie_embeddings=True))
  assert _run(tied, _tokens((1, 3)))["logits"].shape == (1, 3, 128)


def test_last_token_index_left_and_right_padding():
  mask = jnp.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]], bool)
  np.testing.assert_array_equal(last_token_index(mask), [2, 4, 4, 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_ignores_padding(family):
  """A padded sequence (left or right, any pad ids) scores as the unpadded one."""
  cfg = FAMILIES[family](num_reward_heads=2)
  model = _model(cfg)
  length, width = 5, 9
  real = _tokens((1, length), seed=3)
  expected = _run(model, real)["rewards"]
  junk = _tokens((1, width - length), seed=4)
  pad_mask = jnp.zeros((1, width - length), bool)
  on = jnp.ones((1, length), bool)
  for tokens, mask in (
      (jnp.concatenate([real, junk], 1), jnp.concatenate([on, pad_mask], 1)),  # right
      (jnp.concatenate([junk, real], 1), jnp.concatenate([pad_mask, on], 1)),  # left
  ):
    _close(_run(model, tokens, mask)["rewards"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_incremental_equals_full_forward(family):
  """Prefill, then chunks of 1 and 2 tokens: hidden states match one full forward."""
  cfg = FAMILIES[family]()
  model = _model(cfg)
  batch, seq = 2, 10
  tokens = _tokens((batch, seq), seed=5)
  full, _ = _fwd(model, tokens)
  cache = kvc.init_cache(cfg, batch, seq + 2)  # spare slots stay invalid
  pieces, start = [], 0
  for size in (4, 1, 2, 1, 1, 1):
    chunk = tokens[:, start:start + size]
    positions = jnp.broadcast_to(jnp.arange(start, start + size), (batch, size))
    hidden, cache = _fwd(model, chunk, positions=positions, cache=cache)
    pieces.append(hidden)
    start += size
  assert start == seq and int(cache.index) == seq
  _close(jnp.concatenate(pieces, 1), full, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(cache.valid[:, :seq], True)
  np.testing.assert_array_equal(cache.valid[:, seq:], False)


def test_kv_cache_with_left_padded_prefill():
  """Left-padded rows in the cache decode like the same rows unpadded."""
  cfg = C.tiny_llama()
  model = _model(cfg)
  tokens = _tokens((2, 7), seed=6)
  mask = jnp.array([[0, 0, 1, 1, 1, 1, 1], [1] * 7], bool)
  cache = kvc.init_cache(cfg, 2, 8)
  _, cache = _fwd(model, tokens, mask, cache=cache)
  nxt = _tokens((2, 1), seed=7)
  positions = jnp.sum(mask, axis=1, keepdims=True)
  step, _ = _fwd(model, nxt, positions=positions, cache=cache)
  for row in range(2):
    alone = jnp.concatenate([tokens[row][mask[row]], nxt[row]])[None]
    full, _ = _fwd(model, alone)
    _close(step[row, 0], full[0, -1], atol=1e-4, rtol=0)


def test_kv_cache_default_positions_count_cached_tokens():
  cfg = C.tiny_llama()
  model = _model(cfg)
  tokens = _tokens((2, 6), seed=8)
  full, _ = _fwd(model, tokens)
  cache = kvc.init_cache(cfg, 2, 6)
  _, cache = _fwd(model, tokens[:, :5], cache=cache)
  step, _ = _fwd(model, tokens[:, 5:], cache=cache)
  _close(step[:, 0], full[:, 5], atol=1e-4, rtol=0)


def test_dropout_only_with_a_key():
  cfg = C.tiny_llama(dropout_rate=0.3)
  model, plain = _model(cfg), _model(cfg.replace(dropout_rate=0.0))
  tokens = _tokens((2, 8))
  no_key, _ = _fwd(model, tokens)
  np.testing.assert_array_equal(no_key, _fwd(plain, tokens)[0])
  np.testing.assert_array_equal(no_key, _fwd(model, tokens)[0])
  a, _ = _fwd(model, tokens, dropout_key=jax.random.key(1))
  a_again, _ = _fwd(model, tokens, dropout_key=jax.random.key(1))
  b, _ = _fwd(model, tokens, dropout_key=jax.random.key(2))
  np.testing.assert_array_equal(a, a_again)
  assert not np.allclose(a, b, atol=1e-3)
  assert not np.allclose(a, no_key, atol=1e-3)
  # A key with rate 0 changes nothing.
  np.testing.assert_array_equal(_fwd(plain, tokens, dropout_key=jax.random.key(1))[0], no_key)


def test_bfloat16_compute_keeps_float32_params():
  cfg = C.tiny_llama(num_reward_heads=1)
  ref, half = _model(cfg), _model(cfg.replace(dtype="bfloat16"))
  dtypes = {str(x.dtype) for x in jax.tree.leaves(nnx.state(half, nnx.Param))}
  assert dtypes == {"float32"}
  tokens = _tokens((2, 8))
  mask = jnp.ones((2, 8), bool)
  full, low = _run(ref, tokens, mask), _run(half, tokens, mask)
  assert low["hidden"].dtype == jnp.bfloat16
  assert low["logits"].dtype == jnp.float32 and low["rewards"].dtype == jnp.float32
  _close(low["hidden"], full["hidden"], atol=0.1, rtol=0.05)
  _close(low["logits"], full["logits"], atol=0.02, rtol=0.05)
  _close(low["rewards"], full["rewards"], atol=0.03, rtol=0.05)
  cache = kvc.init_cache(cfg.replace(dtype="bfloat16"), 2, 8)
  assert cache.keys[0].dtype == jnp.bfloat16


def test_remat_gives_the_same_gradients():
  """Remat wraps whole blocks, whatever their family: one family is enough."""
  tokens = _tokens((2, 8), seed=9)
  mask = jnp.ones((2, 8), bool).at[0, 6:].set(False)

  def grads(remat):
    model = _model(C.tiny_llama(num_reward_heads=1, remat=remat, dropout_rate=0.1))
    graphdef, params = nnx.split(model)

    def loss(params):
      m = nnx.merge(graphdef, params)
      hidden, _ = m(tokens, mask, dropout_key=jax.random.key(0))
      return jnp.sum(m.rewards(hidden, mask) ** 2) + jnp.mean(m.logits(hidden) ** 2)

    grad_fn = jax.grad(loss)
    jaxpr = str(jax.make_jaxpr(grad_fn)(params))
    assert ("remat" in jaxpr or "checkpoint" in jaxpr) == remat
    return jax.jit(grad_fn)(params)

  plain, remat = grads(False), grads(True)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("packed", [False, True])
def test_read_at_equals_full_forward_and_its_gradients(family, packed):
  """read_at runs the last block on the read rows only: same values, same gradients."""
  tokens = _tokens((3, 10), seed=4)
  mask = jnp.ones((3, 10), bool).at[0, :3].set(False).at[1, 7:].set(False)
  attn_mask = None
  if packed:  # a prompt of 4 then two responses of 3 that do not see each other
    seg = jnp.array([0] * 4 + [1] * 3 + [2] * 3)
    attn_mask = jnp.broadcast_to(
        (seg[None, :] <= seg[:, None]) & ((seg[None, :] == 0) | (seg[None, :] == seg[:, None]))
        & jnp.tril(jnp.ones((10, 10), bool)), (3, 10, 10))
  read_at = jnp.stack([last_token_index(mask), jnp.array([5, 2, 9])], axis=1)
  model = _model(FAMILIES[family](num_reward_heads=2, qkv_bias=True))
  graphdef, params = nnx.split(model)

  def run(params, read):
    m = nnx.merge(graphdef, params)
    hidden, _ = m(tokens, mask, attn_mask=attn_mask, read_at=read_at if read else None)
    if not read:
      hidden = jnp.take_along_axis(hidden, read_at[:, :, None], axis=1)
    return m.reward_scores(hidden)

  full, part = jax.jit(run, static_argnums=1)(params, False), jax.jit(run, static_argnums=1)(
      params, True)
  assert part.shape == (3, 2, 2)
  _close(part, full, rtol=1e-5, atol=1e-6)
  grad = jax.jit(jax.grad(lambda p, read: jnp.sum(run(p, read) ** 2)), static_argnums=1)
  for a, b in zip(jax.tree.leaves(grad(params, False)), jax.tree.leaves(grad(params, True)),
                  strict=True):  # sums in another order: rounding relative to the leaf's scale
    _close(b, a, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(a))))


def test_read_at_rejects_a_cache():
  model = _model(C.tiny_llama())
  cache = kvc.init_cache(model.cfg, 1, 8)
  with pytest.raises(ValueError, match="read_at"):
    model(_tokens((1, 2)), cache=cache, read_at=jnp.zeros((1, 1), int))


def test_swiglu_gradients_match_autodiff():
  from rmjax.models.transformer import _swiglu
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  w = jax.random.normal(jax.random.key(1), (8, 2, 6))

  def reference(x, w):
    both = jnp.einsum("bse,etf->bstf", x, w)
    return jax.nn.silu(both[:, :, 0]) * both[:, :, 1]

  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  _close(_swiglu(x, w), reference(x, w), rtol=1e-6)
  for a, b in zip(jax.grad(loss(reference), (0, 1))(x, w),
                  jax.grad(loss(_swiglu), (0, 1))(x, w), strict=True):
    _close(b, a, rtol=1e-5, atol=1e-6)


def test_rope_inverse_frequencies_scaling():
  cfg = C.tiny_llama()
  base = rope_inverse_frequencies(cfg)
  dim = cfg.dim_per_head
  np.testing.assert_allclose(base, 1.0 / 10_000 ** (np.arange(0, dim, 2) / dim), rtol=1e-6)
  linear = rope_inverse_frequencies(
      cfg.replace(rope_scaling=(("rope_type", "linear"), ("factor", 2.0))))
  np.testing.assert_allclose(linear, base / 2, rtol=1e-6)
  llama3 = rope_inverse_frequencies(cfg.replace(rope_scaling=LLAMA3))
  wavelen = 2 * np.pi / base
  short, long = wavelen < 64 / 4, wavelen > 64 / 1  # original / high, original / low
  assert short.any() and long.any() and (~short & ~long).any()
  np.testing.assert_allclose(llama3[short], base[short], rtol=1e-6)
  np.testing.assert_allclose(llama3[long], base[long] / 8, rtol=1e-6)
  middle = ~short & ~long
  smooth = (64 / wavelen[middle] - 1.0) / (4.0 - 1.0)  # Llama 3.1's published blend
  np.testing.assert_allclose(
      llama3[middle], (1 - smooth) * base[middle] / 8 + smooth * base[middle], rtol=1e-5)


def test_llama3_rope_runs_past_original_length():
  cfg = C.tiny_llama(rope_scaling=LLAMA3, rope_theta=500_000.0, num_reward_heads=1)
  model = _model(cfg)
  tokens = _tokens((2, 80))
  hidden, _ = _fwd(model, tokens)
  assert np.all(np.isfinite(np.asarray(hidden)))
  plain, _ = _fwd(_model(cfg.replace(rope_scaling=None)), tokens)
  assert not np.allclose(hidden, plain, atol=1e-4)  # the scaling is applied


def test_rope_depends_only_on_relative_positions():
  model = _model(C.tiny_llama(rope_scaling=LLAMA3))
  tokens = _tokens((2, 6))
  positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
  a, _ = _fwd(model, tokens, positions=positions)
  b, _ = _fwd(model, tokens, positions=positions + 11)
  _close(a, b, atol=1e-4, rtol=0)


def test_gpt2_rejects_sequences_longer_than_its_position_table():
  model = _model(C.tiny_gpt2(max_seq_len=8))
  hidden, _ = _fwd(model, _tokens((1, 8)))
  assert np.all(np.isfinite(np.asarray(hidden)))
  with pytest.raises(ValueError, match="max_seq_len"):
    _fwd(model, _tokens((1, 10)))
