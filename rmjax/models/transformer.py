"""The decoder-only transformer (Flax NNX) and its heads.

``Transformer.__call__`` maps tokens [batch, seq] to final hidden states
[batch, seq, d_model]; the heads read them: ``logits`` (LM), ``rewards`` (K scalar
heads at each sequence's last real token) and ``values`` (per token). Randomness is
explicit: dropout runs only when a ``dropout_key`` is passed. With ``lora_rank > 0`` the
projections of ``LORA_PROJECTIONS`` carry low-rank adapters (``rmjax/models/lora.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rmjax.models import kv_cache as kvc
from rmjax.models.config import ModelConfig
from rmjax.models.layers import LoRA, Norm, apply_rope, dropout, param, rope_inverse_frequencies
from rmjax.parallel.activations import shard_activation

# The residual stream between blocks; the parallel layer shards its rows (FSDP: every
# device computes its own rows and gathers the weights, not the other way round).
RESIDUAL_AXES = ("batch", "length", "embed")

_MASKED = -1e30  # Finite, so a fully masked row (a left pad's query) gives no NaN.
# ModelConfig.lora_targets name -> (block part, its projection, the projection's number of
# input axes). Projection "name" keeps its adapter as "name_lora" (None when not adapted).
LORA_PROJECTIONS = {"qkv": ("attn", "qkv", 1), "o": ("attn", "o", 2),
                    "gate_up": ("mlp", "up", 1), "down": ("mlp", "down", 1)}


def attention_mask(mask: jax.Array, cache: kvc.KVCache | None, seq: int) -> jax.Array:
  """[batch, seq, keys] bool: causal, and keys restricted to real tokens.

  Without a cache keys are the current tokens (mask [batch, seq]); with one they are
  the cache slots, already holding the current tokens at ``cache.index``.
  """
  if cache is None:
    causal = jnp.tril(jnp.ones((seq, seq), bool))
    return causal[None] & mask[:, None, :]
  slots = jnp.arange(cache.max_len)
  query_slots = cache.index + jnp.arange(seq)
  causal = slots[None, :] <= query_slots[:, None]
  return causal[None] & cache.valid[:, None, :]


def default_positions(mask: jax.Array) -> jax.Array:
  """[batch, seq] position of each token: the count of real tokens before it in its row
  (so left padding is handled; pads get 0)."""
  return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)


def last_token_index(mask: jax.Array) -> jax.Array:
  """[batch] index of the last real token of each row (left or right padding)."""
  positions = jnp.arange(mask.shape[1])
  return jnp.max(jnp.where(mask, positions, 0), axis=1)


def sequence_rewards(model, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """float32 [batch, K] rewards of ``model`` on tokens/mask [batch, seq], read at each
  row's last real token; only that token goes through the last block (``read_at``)."""
  hidden, _ = model(tokens, mask, read_at=last_token_index(mask)[:, None])
  return model.reward_scores(hidden[:, 0])


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    e, h, kv, d = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
    w, std = cfg.weight_dtype, cfg.init_std
    self.cfg = cfg
    groups = h // kv
    # One fused projection for queries, keys and values: for each KV head, its
    # `groups` query heads, then its key, then its value ([embed, kv, groups + 2, d]).
    # A single matmul per step, and tensor parallelism over KV heads keeps every
    # query head with the key and value it attends with.
    self.qkv = param(rngs, (e, kv, groups + 2, d), ("embed", "kv_heads", "qkv", "head_dim"),
                     w, std)
    self.o = param(rngs, (h, d, e), ("heads", "head_dim", "embed"), w,
                   std / (2 * cfg.n_layers) ** 0.5)
    has_bias = cfg.qkv_bias or cfg.family == "gpt2"
    self.qkv_bias = (param(rngs, (kv, groups + 2, d), ("kv_heads", "qkv", "head_dim"), w, 0)
                     if has_bias else None)
    self.o_bias = (param(rngs, (e,), ("embed",), w, 0) if cfg.family == "gpt2" else None)
    self.qkv_lora = self.o_lora = None  # set by Transformer when adapted

  def __call__(self, x, positions, mask, layer_cache, read_at=None):
    """x [b, s, e]; positions [b, s]; mask [b, s, keys]; layer_cache (k, v, index) or None.

    ``read_at`` [b, n] (no cache): queries only at these positions, so the output is
    [b, n, e]; keys and values still cover all of x.
    """
    w = self.qkv[...].astype(x.dtype)
    groups = w.shape[2] - 2
    if read_at is not None:
      # Projections of weight slices: queries only for the n read rows.
      rows = _rows(x, read_at)
      q = jnp.einsum("bse,ekgd->bskgd", rows, w[:, :, :groups])
      kv = jnp.einsum("bse,ekgd->bskgd", x, w[:, :, groups:])
      if self.qkv_lora is not None:
        q = q + self.qkv_lora(rows, (slice(None), slice(None, groups)))
        kv = kv + self.qkv_lora(x, (slice(None), slice(groups, None)))
      if self.qkv_bias is not None:
        bias = self.qkv_bias[...].astype(x.dtype)
        q, kv = q + bias[:, :groups], kv + bias[:, groups:]
      k, v = kv[:, :, :, 0], kv[:, :, :, 1]
      q_positions, mask = _rows(positions, read_at), _rows(mask, read_at)
    else:
      qkv = jnp.einsum("bse,ekgd->bskgd", x, w)
      if self.qkv_lora is not None:
        qkv = qkv + self.qkv_lora(x)
      if self.qkv_bias is not None:
        qkv = qkv + self.qkv_bias[...].astype(x.dtype)
      # One split, not three slices: its gradient is a single concatenate, where the
      # slices' is a zero-padded full-size buffer per slice plus their sum.
      q, k, v = jnp.split(qkv, [groups, groups + 1], axis=3)
      k, v = k[:, :, :, 0], v[:, :, :, 0]
    if self.cfg.family == "llama":
      inv_freq = rope_inverse_frequencies(self.cfg)  # a trace-time constant
      q = apply_rope(q, positions if read_at is None else q_positions, inv_freq)
      k = apply_rope(k, positions, inv_freq)
    k = k.transpose(0, 2, 1, 3)  # [b, kv, s, d]: the cache layout
    v = v.transpose(0, 2, 1, 3)
    if layer_cache is not None:
      k_buf, v_buf, index = layer_cache
      k = kvc.write(k_buf, k, index, axis=2)
      v = kvc.write(v_buf, v, index, axis=2)
      layer_cache = (k, v)
    b, s, _, _, d = q.shape
    scores = jnp.einsum("bskgd,bktd->bkgst", q, k,
                        preferred_element_type=jnp.float32) * d ** -0.5
    scores = jnp.where(mask[:, None, None], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    heads = jnp.einsum("bkgst,bktd->bskgd", probs, v).reshape(b, s, -1, d)
    out = jnp.einsum("bshd,hde->bse", heads, self.o[...].astype(x.dtype))
    if self.o_lora is not None:
      out = out + self.o_lora(heads)
    if self.o_bias is not None:
      out = out + self.o_bias[...].astype(x.dtype)
    return out, layer_cache


class Mlp(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    e, f, w, std = cfg.d_model, cfg.d_ff, cfg.weight_dtype, cfg.init_std
    self.gated = cfg.family == "llama"
    if self.gated:  # SwiGLU: gate and up projections fused into one matmul.
      self.up = param(rngs, (e, 2, f), ("embed", "gate_up", "mlp"), w, std)
    else:
      self.up = param(rngs, (e, f), ("embed", "mlp"), w, std)
    self.down = param(rngs, (f, e), ("mlp", "embed"), w, std / (2 * cfg.n_layers) ** 0.5)
    self.up_bias = None if self.gated else param(rngs, (f,), ("mlp",), w, 0)
    self.down_bias = None if self.gated else param(rngs, (e,), ("embed",), w, 0)
    self.up_lora = self.down_lora = None  # set by Transformer when adapted

  def __call__(self, x):
    extra = None if self.up_lora is None else self.up_lora(x)
    if self.gated:
      hidden = _swiglu(x, self.up[...].astype(x.dtype), extra)
    else:
      up = x @ self.up[...].astype(x.dtype) + self.up_bias[...].astype(x.dtype)
      hidden = jax.nn.gelu(up if extra is None else up + extra, approximate=True)
    out = hidden @ self.down[...].astype(x.dtype)
    if self.down_lora is not None:
      out = out + self.down_lora(hidden)
    return out if self.down_bias is None else out + self.down_bias[...].astype(x.dtype)


def _swiglu_fwd(x, w, extra):
  both = jnp.einsum("bse,etf->bstf", x, w)
  if extra is not None:
    both = both + extra
  return jax.nn.silu(both[:, :, 0]) * both[:, :, 1], (x, w, both, extra is None)


@jax.custom_vjp
def _swiglu(x, w, extra=None):
  """silu(x @ w[:, 0]) * (x @ w[:, 1]) for the fused gate/up kernel w [e, 2, f], with
  ``extra`` [b, s, 2, f] (a LoRA update) added to the fused projection, or None.

  The hand-written backward builds the gradient of the fused output in one pass
  (a stack of the gate and up gradients); autodiff of the two slices writes a
  zero-padded full-size buffer for each and then adds them.
  """
  return _swiglu_fwd(x, w, extra)[0]


def _swiglu_bwd(res, d_hidden):
  x, w, both, no_extra = res
  gate, up = both[:, :, 0], both[:, :, 1]
  sig = jax.nn.sigmoid(gate)
  d_gate = d_hidden * up * sig * (1 + gate * (1 - sig))  # d silu(g) = sig (1 + g (1 - sig))
  d_both = jnp.stack([d_gate, d_hidden * gate * sig], axis=2)
  return (jnp.einsum("bstf,etf->bse", d_both, w), jnp.einsum("bstf,bse->etf", d_both, x),
          None if no_extra else d_both)


_swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.rate = cfg.dropout_rate
    self.attn_norm = Norm(cfg, rngs)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = Norm(cfg, rngs)
    self.mlp = Mlp(cfg, rngs)

  def __call__(self, x, positions, mask, layer_cache, dropout_key, read_at=None):
    """``read_at`` [b, n]: the block's output only at these positions, [b, n, e]."""
    keys = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    attn_out, layer_cache = self.attn(self.attn_norm(x), positions, mask, layer_cache,
                                      read_at)
    if read_at is not None:
      x = _rows(x, read_at)
    x = x + dropout(attn_out, self.rate, keys[0])
    x = x + dropout(self.mlp(self.mlp_norm(x)), self.rate, keys[1])
    return x, layer_cache


def _rows(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [b, s, ...] at index [b, n] -> [b, n, ...]."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _run_block(block: Block, *args):
  return block(*args)


class Transformer(nnx.Module):
  """Decoder-only transformer with optional LM, reward and value heads."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    e, w, std = cfg.d_model, cfg.weight_dtype, cfg.init_std
    self.cfg = cfg
    self.embed = param(rngs, (cfg.vocab_size, e), ("vocab", "embed"), w, std)
    self.pos_embed = (param(rngs, (cfg.max_seq_len, e), ("positions", "embed"), w, std / 2)
                      if cfg.family == "gpt2" else None)
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.final_norm = Norm(cfg, rngs)
    self.lm_head = (param(rngs, (e, cfg.vocab_size), ("embed", "vocab"), w, std)
                    if cfg.lm_head and not cfg.tie_embeddings else None)
    self.reward_head = (param(rngs, (e, cfg.num_reward_heads), ("embed", "reward_heads"), w,
                              1.0 / (e + 1) ** 0.5) if cfg.num_reward_heads else None)
    self.value_head = (param(rngs, (e,), ("embed",), w, 1.0 / (e + 1) ** 0.5)
                       if cfg.value_head else None)
    self._block_fn = nnx.remat(_run_block) if cfg.remat else _run_block
    # Adapters come last, so the base and heads draw the same numbers as without LoRA.
    for target in cfg.lora_target_names if cfg.lora_rank else ():
      part, name, n_inputs = LORA_PROJECTIONS[target]
      for block in self.blocks:
        module = getattr(block, part)
        setattr(module, f"{name}_lora",
                nnx.data(LoRA(cfg, getattr(module, name), n_inputs, rngs)))

  def __call__(self, tokens: jax.Array, mask: jax.Array | None = None, *,
               positions: jax.Array | None = None, cache: kvc.KVCache | None = None,
               dropout_key: jax.Array | None = None, attn_mask: jax.Array | None = None,
               read_at: jax.Array | None = None):
    """tokens, mask [batch, seq] -> (hidden [batch, seq, d_model], updated cache or None).

    ``mask`` marks real tokens (default: all). ``positions`` default to each row's
    count of real tokens before it, so left padding is handled. With a ``cache`` the
    tokens are written at slot ``cache.index`` and attend to all earlier slots.
    ``attn_mask`` [batch, seq, seq] (no cache) replaces the causal mask, for packed
    sequences such as a shared prompt followed by two responses that must not see
    each other.

    ``read_at`` [batch, n] (no cache): return the hidden states only at these positions,
    [batch, n, d_model]. The last block then computes queries, attention and MLP for
    those n rows alone (keys and values for all), which is all a reward head reads.
    """
    cfg = self.cfg
    mask = jnp.ones(tokens.shape, bool) if mask is None else mask.astype(bool)
    length = tokens.shape[1] if cache is None else cache.max_len
    if self.pos_embed is not None and length > cfg.max_seq_len:
      raise ValueError(f"sequence length {length} exceeds the learned position table "
                       f"(ModelConfig.max_seq_len={cfg.max_seq_len})")
    if positions is None:
      positions = default_positions(mask)
      if cache is not None:  # continue from the real tokens already cached
        positions = positions + jnp.sum(cache.valid, axis=1, dtype=positions.dtype)[:, None]
    if cache is not None:
      cache = cache._replace(valid=kvc.write(cache.valid, mask, cache.index))
    if attn_mask is None:
      attn_mask = attention_mask(mask, cache, tokens.shape[1])
    elif cache is not None:
      raise ValueError("attn_mask cannot be combined with a KV cache")
    if read_at is not None and cache is not None:
      raise ValueError("read_at cannot be combined with a KV cache")
    block_key = embed_key = None
    if dropout_key is not None:
      block_key, embed_key = jax.random.split(dropout_key)
    x = self.embed_tokens(tokens, positions, embed_key)
    x, layer_caches = self.run_blocks(x, positions, attn_mask, cache=cache,
                                      dropout_key=block_key, read_at=read_at)
    x = self.final_norm(x)
    if cache is not None:
      cache = kvc.KVCache(*layer_caches, cache.valid, cache.index + tokens.shape[1])
    return x, cache

  def embed_tokens(self, tokens: jax.Array, positions: jax.Array,
                   dropout_key: jax.Array | None = None) -> jax.Array:
    """tokens, positions [batch, seq] -> the first block's input [batch, seq, d_model]."""
    cfg = self.cfg
    x = jnp.take(self.embed[...], tokens, axis=0).astype(cfg.compute_dtype)
    if self.pos_embed is not None:
      x = x + jnp.take(self.pos_embed[...], positions, axis=0).astype(cfg.compute_dtype)
    x = x if dropout_key is None else dropout(x, cfg.dropout_rate, dropout_key)
    return shard_activation(x, RESIDUAL_AXES)

  def run_blocks(self, x: jax.Array, positions: jax.Array, attn_mask: jax.Array,
                 start: int = 0, stop: int | None = None, *, cache: kvc.KVCache | None = None,
                 dropout_key: jax.Array | None = None, read_at: jax.Array | None = None):
    """x [batch, seq, d_model] through ``blocks[start:stop]`` (no final norm).

    positions [batch, seq]; attn_mask [batch, seq, keys]. Split points let a frozen
    prefix be computed once and cached (``rmjax.rm.feature_cache``). Returns (x,
    (keys, values) of those blocks' updated cache layers, or None without a cache).
    Block i's dropout key is ``fold_in(dropout_key, i)`` whatever ``start`` is.
    ``read_at`` [batch, n]: the model's last block (if run) outputs only these rows.
    """
    new_keys, new_values = [], []
    for i in range(*slice(start, stop).indices(len(self.blocks))):
      layer_cache = None if cache is None else (cache.keys[i], cache.values[i], cache.index)
      block_key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
      last = i == len(self.blocks) - 1
      x, layer_cache = self._block_fn(self.blocks[i], x, positions, attn_mask, layer_cache,
                                      block_key, read_at if last else None)
      x = shard_activation(x, RESIDUAL_AXES)
      if cache is not None:
        new_keys.append(layer_cache[0])
        new_values.append(layer_cache[1])
    return x, None if cache is None else (tuple(new_keys), tuple(new_values))

  def logits(self, hidden: jax.Array) -> jax.Array:
    """hidden [..., d_model] -> float32 logits [..., vocab]."""
    if self.cfg.tie_embeddings:
      kernel = self.embed[...].astype(hidden.dtype)
      return jnp.einsum("...e,ve->...v", hidden, kernel, preferred_element_type=jnp.float32)
    if self.lm_head is None:
      raise ValueError("this model was built with lm_head=False and untied embeddings")
    return jnp.einsum("...e,ev->...v", hidden, self.lm_head[...].astype(hidden.dtype),
                      preferred_element_type=jnp.float32)

  def rewards(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """hidden [batch, seq, d_model], mask [batch, seq] -> float32 [batch, K] rewards.

    Read at each sequence's last real token; no bias (it cancels in pairwise losses).
    """
    return self.rewards_at(hidden, last_token_index(mask))

  def rewards_at(self, hidden: jax.Array, index: jax.Array) -> jax.Array:
    """Rewards [batch, K] read from hidden [batch, seq, d_model] at index [batch]."""
    return self.reward_scores(jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0])

  def reward_scores(self, hidden: jax.Array) -> jax.Array:
    """hidden [..., d_model] (already at the read positions) -> float32 [..., K]."""
    if self.reward_head is None:
      raise ValueError("this model has num_reward_heads=0")
    return jnp.einsum("...e,ek->...k", hidden, self.reward_head[...].astype(hidden.dtype),
                      preferred_element_type=jnp.float32)

  def values(self, hidden: jax.Array) -> jax.Array:
    """hidden [batch, seq, d_model] -> float32 per-token values [batch, seq]."""
    if self.value_head is None:
      raise ValueError("this model has value_head=False")
    return jnp.einsum("bse,e->bs", hidden, self.value_head[...].astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
