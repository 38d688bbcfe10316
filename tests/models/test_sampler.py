"""Sampling: checked against full forwards without a cache, recomputed independently.

Every ``generate`` call compiles once per (model, shapes, SamplingConfig), so the tests
share one model, one batch shape and as few sampling configs as they can.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmjax.models import config as C
from rmjax.models.sampler import SamplingConfig, allowed_logits, generate, pack_left, sample_token
from rmjax.models.transformer import Transformer

BATCH, PROMPT, NEW = 4, 8, 8
# A larger init scale than the default makes next-token distributions peaked, so
# greedy choices are far from ties and top-k/top-p sets are neither one token nor all.
CFG = C.tiny_llama(init_std=0.3)
GREEDY = SamplingConfig(max_new_tokens=NEW, greedy=True)


@pytest.fixture(scope="module")
def model():
  return Transformer(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def prompts():
  """[BATCH, PROMPT] tokens, all real."""
  return jax.random.randint(jax.random.key(42), (BATCH, PROMPT), 1, CFG.vocab_size)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, tokens, mask):
  model = nnx.merge(graphdef, state)
  hidden, _ = model(tokens, mask)
  return model.logits(hidden)


def full_logits(model, tokens, mask=None):
  """float32 [batch, seq, vocab] numpy logits of one full forward (no cache)."""
  mask = jnp.ones(tokens.shape, bool) if mask is None else mask
  return np.asarray(_logits(*nnx.split(model), tokens, mask), np.float64)


def step_logits(model, out):
  """[batch, new, vocab] full-forward logits that predicted each sampled token."""
  tokens, mask = out.sequences()
  logits = full_logits(model, tokens, mask)
  start = out.prompt_tokens.shape[1] - 1
  return logits[:, start:start + out.tokens.shape[1]]


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def greedy_reference(model, prompt, new):
  """Greedy decoding by argmax over full forwards, one row, no cache, no padding."""
  buffer = np.zeros((1, len(prompt) + new), np.int32)
  buffer[0, :len(prompt)] = prompt
  tokens, gaps = [], []
  for i in range(new):
    # Causal: the logits at a position ignore the (still empty) slots after it.
    logits = full_logits(model, jnp.asarray(buffer))[0, len(prompt) - 1 + i]
    top2 = np.sort(logits)[-2:]
    gaps.append(top2[1] - top2[0])
    tokens.append(int(np.argmax(logits)))
    buffer[0, len(prompt) + i] = tokens[-1]
  assert min(gaps) > 1e-3, "near-tie: choose another seed"
  return np.array(tokens)


def _taken(out):
  return np.asarray(out.tokens), np.asarray(out.mask)


def test_greedy_equals_argmax_of_full_forwards(model, prompts):
  out = generate(model, prompts, None, jax.random.key(0), GREEDY)
  assert out.tokens.shape == out.mask.shape == out.logprobs.shape == (BATCH, NEW)
  assert out.tokens.dtype == jnp.int32 and out.logprobs.dtype == jnp.float32
  assert np.all(out.mask)
  np.testing.assert_array_equal(out.prompt_tokens, prompts)
  for row in range(BATCH):
    np.testing.assert_array_equal(out.tokens[row], greedy_reference(model, prompts[row], NEW))
  # Greedy log-probs are those of the argmax at temperature 1.
  expected = log_softmax(step_logits(model, out)).max(-1)
  np.testing.assert_allclose(out.logprobs, expected, atol=1e-4)
  assert len(np.unique(np.asarray(out.tokens))) > NEW  # not a degenerate repeater


def test_logprobs_match_full_forward_at_temperature(model, prompts):
  sampling = SamplingConfig(max_new_tokens=NEW, temperature=0.7)
  out = generate(model, prompts, None, jax.random.key(1), sampling)
  tokens, mask = _taken(out)
  assert mask.all()
  expected = np.take_along_axis(
      log_softmax(step_logits(model, out) / 0.7), tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(out.logprobs, expected, atol=1e-4)
  # Determinism: the key alone fixes the sample.
  again = generate(model, prompts, None, jax.random.key(1), sampling)
  np.testing.assert_array_equal(again.tokens, out.tokens)
  np.testing.assert_array_equal(again.logprobs, out.logprobs)
  other = generate(model, prompts, None, jax.random.key(2), sampling)
  assert not np.array_equal(other.tokens, out.tokens)


def test_top_k_tokens_are_among_the_k_largest(model, prompts):
  out = generate(model, prompts, None, jax.random.key(3),
                 SamplingConfig(max_new_tokens=NEW, top_k=3))
  tokens, mask = _taken(out)
  logits = step_logits(model, out)
  chosen = np.take_along_axis(logits, tokens[..., None], -1)
  rank = np.sum(logits > chosen + 1e-4, axis=-1)  # strictly larger logits
  assert np.all(rank < 3), rank
  assert np.any(rank > 0), "top-k sampling never left the argmax: the test is vacuous"
  # Log-probs are those of the untruncated softmax (PPO's old log-probs).
  np.testing.assert_allclose(
      out.logprobs, np.take_along_axis(log_softmax(logits), tokens[..., None], -1)[..., 0],
      atol=1e-4)


def test_top_p_tokens_are_in_the_nucleus(model, prompts):
  top_p, temperature = 0.6, 1.3
  out = generate(model, prompts, None, jax.random.key(4),
                 SamplingConfig(max_new_tokens=NEW, top_p=top_p, temperature=temperature))
  tokens, _ = _taken(out)
  probs = np.exp(log_softmax(step_logits(model, out) / temperature))
  chosen = np.take_along_axis(probs, tokens[..., None], -1)
  # Mass strictly before a token in descending order; the nucleus is where it is < p.
  mass_before = np.sum(np.where(probs > chosen, probs, 0.0), axis=-1)
  assert np.all(mass_before < top_p + 1e-5), mass_before
  nucleus_size = np.sum(np.sort(probs, -1)[..., ::-1].cumsum(-1) - np.sort(probs, -1)[
      ..., ::-1] < top_p, axis=-1)
  assert np.any(nucleus_size > 1) and np.all(nucleus_size < CFG.vocab_size)
  assert np.any(mass_before > 0), "top-p sampling never left the argmax: the test is vacuous"


def test_allowed_logits_by_hand():
  logits = jnp.array([[1.0, 4.0, 3.0, 2.0], [0.0, -1.0, 5.0, 0.5]])
  inf = -np.inf
  np.testing.assert_array_equal(allowed_logits(logits, 0, 1.0), logits)
  np.testing.assert_array_equal(allowed_logits(logits, 2, 1.0),
                                [[inf, 4.0, 3.0, inf], [inf, inf, 5.0, 0.5]])
  np.testing.assert_array_equal(allowed_logits(logits, 1, 1.0),
                                [[inf, 4.0, inf, inf], [inf, inf, 5.0, inf]])
  probs = jnp.log(jnp.array([[0.12, 0.5, 0.3, 0.08], [0.05, 0.15, 0.45, 0.35]]))
  # Keep the smallest set whose mass reaches p (the top token always stays).
  kept = lambda p: np.isfinite(np.asarray(allowed_logits(probs, 0, p)))
  np.testing.assert_array_equal(kept(0.7), [[0, 1, 1, 0], [0, 0, 1, 1]])
  np.testing.assert_array_equal(kept(0.4), [[0, 1, 0, 0], [0, 0, 1, 0]])
  np.testing.assert_array_equal(kept(0.01), [[0, 1, 0, 0], [0, 0, 1, 0]])
  np.testing.assert_array_equal(kept(0.85), [[1, 1, 1, 0], [0, 1, 1, 1]])
  np.testing.assert_array_equal(kept(1.0), np.ones((2, 4)))
  np.testing.assert_allclose(allowed_logits(probs, 0, 0.7)[0, 1:3], probs[0, 1:3])
  # top-k first, then top-p over the renormalised survivors: among {0.5, 0.3} the
  # 0.5 token alone holds 62.5% of the mass.
  np.testing.assert_array_equal(
      np.isfinite(np.asarray(allowed_logits(probs, 2, 0.6)))[0], [0, 1, 0, 0])


def test_sample_token_greedy_and_logprob():
  logits = jnp.array([[0.0, 2.0, 1.0], [3.0, 0.0, -1.0]])
  tokens, logprobs = sample_token(logits, jnp.array([0.99, 0.01]),
                                  SamplingConfig(max_new_tokens=1, greedy=True,
                                                 temperature=0.5))
  np.testing.assert_array_equal(tokens, [1, 0])
  expected = log_softmax(np.asarray(logits, np.float64) / 0.5)[[0, 1], [1, 0]]
  np.testing.assert_allclose(logprobs, expected, rtol=1e-5, atol=1e-6)


def test_sample_token_inverts_the_cdf():
  logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]] * 5))
  uniform = jnp.array([1e-30, 0.05, 0.25, 0.59, 0.999999])
  plain = SamplingConfig(max_new_tokens=1)
  tokens, logprobs = sample_token(logits, uniform, plain)
  np.testing.assert_array_equal(tokens, [0, 0, 1, 2, 3])
  np.testing.assert_allclose(logprobs, np.log([0.1, 0.1, 0.2, 0.3, 0.4]), rtol=1e-5)
  # Masked-out tokens (zero probability) are never drawn, even at the CDF's edges; the
  # log-prob stays that of the untruncated distribution.
  tokens, logprobs = sample_token(logits, uniform, SamplingConfig(max_new_tokens=1, top_k=2))
  np.testing.assert_array_equal(tokens, [2, 2, 2, 3, 3])
  np.testing.assert_allclose(logprobs, np.log([0.3, 0.3, 0.3, 0.4, 0.4]), rtol=1e-5)


def test_sample_token_follows_the_distribution():
  n = 20_000
  probs = np.array([0.05, 0.15, 0.3, 0.5])
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (n, 4))
  uniform = jax.random.uniform(jax.random.key(0), (n,), minval=1e-30, maxval=1.0)
  tokens, _ = sample_token(logits, uniform, SamplingConfig(max_new_tokens=1, temperature=2.0))
  tempered = probs ** 0.5 / np.sum(probs ** 0.5)
  np.testing.assert_allclose(np.bincount(np.asarray(tokens), minlength=4) / n, tempered,
                             atol=0.015)


def test_eos_stops_rows(model, prompts):
  # Row 0 is row 1's prompt plus row 1's first greedy token g0, so row 0 continues
  # with g1; with eos = g1, row 0 stops at once and row 1 one step later.
  base = np.asarray(prompts)
  g = greedy_reference(model, base[1, 1:], 2)
  tokens = base.copy()
  tokens[0] = np.concatenate([base[1, 1:], g[:1]])
  tokens[1] = np.concatenate([[7], base[1, 1:]])
  mask = np.ones_like(tokens, bool)
  mask[1, 0] = False  # row 1 is left-padded
  eos, pad = int(g[1]), CFG.vocab_size - 1
  ref = generate(model, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), GREEDY)
  out = generate(model, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
                 SamplingConfig(max_new_tokens=NEW, greedy=True, eos_id=eos, pad_id=pad))
  ref_tokens = np.asarray(ref.tokens)
  assert ref_tokens[0, 0] == eos and eos in ref_tokens[1, :2]
  assert any(eos not in row for row in ref_tokens), "every row emits eos: weak test"
  for row in range(BATCH):
    hits = np.flatnonzero(ref_tokens[row] == eos)
    stop = hits[0] + 1 if len(hits) else NEW
    np.testing.assert_array_equal(out.tokens[row, :stop], ref_tokens[row, :stop])
    np.testing.assert_array_equal(out.tokens[row, stop:], pad)
    np.testing.assert_array_equal(out.mask[row, :stop], True)  # EOS itself is real
    np.testing.assert_array_equal(out.mask[row, stop:], False)
    np.testing.assert_allclose(out.logprobs[row, :stop], ref.logprobs[row, :stop], atol=1e-5)
    np.testing.assert_array_equal(out.logprobs[row, stop:], 0.0)
  # All rows stop at once: the loop ends early and the rest is padding.
  same = np.repeat(tokens[:1], BATCH, axis=0)
  done = generate(model, jnp.asarray(same), None, jax.random.key(0),
                  SamplingConfig(max_new_tokens=NEW, greedy=True, eos_id=eos, pad_id=pad))
  np.testing.assert_array_equal(done.tokens[:, 0], eos)
  np.testing.assert_array_equal(done.tokens[:, 1:], pad)
  np.testing.assert_array_equal(done.mask, np.arange(NEW)[None].repeat(BATCH, 0) == 0)


def _padded(prompts, lengths, side):
  tokens = np.asarray(prompts).copy()
  mask = np.zeros_like(tokens, bool)
  for row, n in enumerate(lengths):
    if side == "left":
      mask[row, PROMPT - n:] = True
    else:
      mask[row, :n] = True
  tokens[~mask] = 3  # junk pad ids, which must not matter
  return tokens, mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_prompts_decode_like_each_prompt_alone(model, prompts, side):
  lengths = (3, 8, 5, 1)
  tokens, mask = _padded(prompts, lengths, side)
  out = generate(model, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), GREEDY)
  np.testing.assert_array_equal(out.prompt_mask, _padded(prompts, lengths, "left")[1])
  for row, n in enumerate(lengths):
    real = tokens[row][mask[row]]
    np.testing.assert_array_equal(out.prompt_tokens[row, PROMPT - n:], real)
    np.testing.assert_array_equal(out.tokens[row], greedy_reference(model, real, NEW))
  # The log-probs of the batched run are those of full forwards over its own output.
  expected = log_softmax(step_logits(model, out)).max(-1)
  np.testing.assert_allclose(out.logprobs, expected, atol=1e-4)


def test_samples_per_prompt_shares_the_prefill(model, prompts):
  """k samples per prompt from one prefill: the rows, random numbers and results of
  sampling the prompts repeated k times (padded prompts, so the broadcast cache's
  validity and positions matter too)."""
  k, half = 3, BATCH // 2
  tokens, mask = _padded(prompts, (3, 8, 5, 1), "right")
  tokens, mask = tokens[:half], mask[:half]
  sampling = SamplingConfig(max_new_tokens=NEW, temperature=0.7)
  shared = generate(model, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(5), sampling,
                    samples_per_prompt=k)
  repeated = generate(model, jnp.asarray(np.repeat(tokens, k, 0)),
                      jnp.asarray(np.repeat(mask, k, 0)), jax.random.key(5), sampling)
  assert shared.tokens.shape == (half * k, NEW)
  for field in ("prompt_tokens", "prompt_mask", "tokens", "mask"):
    np.testing.assert_array_equal(getattr(shared, field), getattr(repeated, field))
  np.testing.assert_allclose(shared.logprobs, repeated.logprobs, atol=1e-5)
  assert len({tuple(r) for r in np.asarray(shared.tokens)[:k]}) > 1  # samples differ
  with pytest.raises(ValueError, match="samples_per_prompt=0"):
    generate(model, jnp.asarray(tokens), None, jax.random.key(5), sampling, samples_per_prompt=0)


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 5])
def test_prompt_alone_through_generate(model, prompts, n):
  """The literal check: decoding one unpadded prompt with ``generate`` itself."""
  tokens, mask = _padded(prompts, (3, 8, n, 1), "left")
  batched = generate(model, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), GREEDY)
  alone = generate(model, jnp.asarray(tokens[2][mask[2]])[None], None, jax.random.key(0),
                   GREEDY)
  np.testing.assert_array_equal(batched.tokens[2], alone.tokens[0])
  np.testing.assert_allclose(batched.logprobs[2], alone.logprobs[0], atol=1e-5)


def test_pack_left():
  tokens = jnp.array([[5, 6, 7, 0], [0, 0, 8, 9], [1, 0, 2, 0]])
  mask = tokens > 0
  packed, packed_mask = pack_left(tokens, mask)
  np.testing.assert_array_equal(packed_mask, [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]])
  np.testing.assert_array_equal(np.where(packed_mask, packed, 0),
                                [[0, 5, 6, 7], [0, 0, 8, 9], [0, 0, 1, 2]])


@pytest.mark.parametrize("fields, name", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=4, temperature=0.0), "temperature"),
    (dict(max_new_tokens=4, temperature=-1.0), "temperature"),
    (dict(max_new_tokens=4, top_p=0.0), "top_p"),
    (dict(max_new_tokens=4, top_p=1.5), "top_p"),
    (dict(max_new_tokens=4, top_k=-1), "top_k"),
])
def test_sampling_config_validation(fields, name):
  with pytest.raises(ValueError, match=name):
    SamplingConfig(**fields)


def test_prompt_shape_mismatch(model):
  with pytest.raises(ValueError, match="differ in shape"):
    generate(model, jnp.ones((2, 4), jnp.int32), jnp.ones((2, 5), bool), jax.random.key(0),
             GREEDY)


def test_gpt2_generate_past_its_position_table_raises():
  gpt2 = Transformer(C.tiny_gpt2(max_seq_len=8, init_std=0.3), rngs=nnx.Rngs(0))
  prompt = np.arange(1, 7, dtype=np.int32)
  with pytest.raises(ValueError, match=r"sequence length 9 exceeds .*max_seq_len=8"):
    generate(gpt2, jnp.asarray(prompt)[None], None, jax.random.key(0),
             SamplingConfig(max_new_tokens=3, greedy=True))
  # Filling the position table exactly is allowed, and decodes as full forwards do.
  out = generate(gpt2, jnp.asarray(prompt)[None], None, jax.random.key(0),
                 SamplingConfig(max_new_tokens=2, greedy=True))
  np.testing.assert_array_equal(out.tokens[0], greedy_reference(gpt2, prompt, 2))
