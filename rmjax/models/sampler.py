"""Autoregressive sampling with a KV cache, compiled as one program.

``generate`` prefills the prompt, then runs a ``lax.while_loop`` over new tokens
(stopping early once every sequence has emitted EOS). Prompts may be left- or
right-padded with different lengths: they are first packed to the left so that all
rows write the same cache slot at each step.

With ``samples_per_prompt`` k > 1 each prompt is prefilled once and its KV cache
broadcast to k rows (prompt-major: row i * k + j is prompt i's sample j), the same rows,
random numbers and results as sampling the prompts repeated k times, without encoding
each prompt k times.

The returned log-probabilities are those of the sampled tokens under the policy's
own temperature-scaled softmax, *before* top-k/top-p truncation: PPO's old
log-probs (``docs/algorithms.md`` §5).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rmjax.models import kv_cache as kvc
from rmjax.models.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int
  temperature: float = 1.0
  top_k: int = 0  # 0 disables top-k.
  top_p: float = 1.0  # 1.0 disables nucleus sampling.
  greedy: bool = False
  eos_id: int | None = None  # None: never stop early.
  pad_id: int = 0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"SamplingConfig.max_new_tokens={self.max_new_tokens} must be >= 1")
    if self.temperature <= 0:
      raise ValueError(f"SamplingConfig.temperature={self.temperature} must be > 0 "
                       "(use greedy=True for argmax decoding)")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingConfig.top_p={self.top_p} must be in (0, 1]")
    if self.top_k < 0:
      raise ValueError(f"SamplingConfig.top_k={self.top_k} must be >= 0")


class SampleOutput(NamedTuple):
  prompt_tokens: jax.Array  # [batch, prompt_len] the prompt, left-padded.
  prompt_mask: jax.Array  # [batch, prompt_len] bool.
  tokens: jax.Array  # [batch, new] int32 sampled tokens, pad_id after EOS.
  mask: jax.Array  # [batch, new] bool: real tokens (EOS included).
  logprobs: jax.Array  # [batch, new] float32, 0 where mask is False.

  def sequences(self) -> tuple[jax.Array, jax.Array]:
    """Prompt and response joined: tokens and mask [batch, prompt_len + new]."""
    return (jnp.concatenate([self.prompt_tokens, self.tokens], axis=1),
            jnp.concatenate([self.prompt_mask, self.mask], axis=1))


def pack_left(tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Move each row's real tokens to the right end, keeping their order."""
  order = jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True)
  return (jnp.take_along_axis(tokens, order, axis=1),
          jnp.take_along_axis(mask.astype(bool), order, axis=1))


def allowed_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """logits [batch, vocab] with tokens outside the top-k / top-p set set to -inf."""
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # The smallest logit still needed to reach top_p (the first token always stays).
    keep = mass_before < top_p
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def sample_token(logits: jax.Array, uniform: jax.Array, sampling: SamplingConfig):
  """logits [batch, vocab], uniform [batch] in (0, 1) -> (tokens [batch] int32,
  log-probs [batch] float32).

  Sampling inverts the CDF of the allowed distribution with one uniform number per
  row, so the noise for a whole generation is drawn up front (the decode loop then
  runs no random-number generator).
  """
  scaled = logits.astype(jnp.float32) / sampling.temperature
  logprobs_all = jax.nn.log_softmax(scaled, axis=-1)
  if sampling.greedy:
    tokens = jnp.argmax(scaled, axis=-1)
  else:
    allowed = allowed_logits(scaled, sampling.top_k, sampling.top_p)
    cdf = jnp.cumsum(jax.nn.softmax(allowed, axis=-1), axis=-1)
    # The first token whose CDF reaches u; zero-probability tokens never do.
    threshold = uniform[:, None] * cdf[:, -1:]
    tokens = jnp.minimum(jnp.sum(cdf < threshold, axis=-1), logits.shape[-1] - 1)
  logprobs = jnp.take_along_axis(logprobs_all, tokens[:, None], axis=-1)[:, 0]
  return tokens.astype(jnp.int32), logprobs


def broadcast_rows(tree, k: int):
  """Every array of ``tree`` with each row (axis 0) repeated ``k`` times in place; the
  cache's scalar write index stays as it is."""
  return jax.tree.map(lambda x: jnp.repeat(x, k, axis=0) if x.ndim else x, tree)


def _generate(graphdef, state, prompt_tokens, prompt_mask, key, sampling: SamplingConfig,
              samples_per_prompt: int):
  model: Transformer = nnx.merge(graphdef, state)
  prompt_len = prompt_tokens.shape[1]
  new = sampling.max_new_tokens
  prompt_tokens, prompt_mask = pack_left(prompt_tokens, prompt_mask)
  cache = kvc.init_cache(model.cfg, prompt_tokens.shape[0], prompt_len + new)
  hidden, cache = model(prompt_tokens, prompt_mask, cache=cache)
  logits = model.logits(hidden[:, -1])
  if samples_per_prompt > 1:  # the prefill done once per prompt, then shared
    prompt_tokens, prompt_mask, cache, logits = broadcast_rows(
        (prompt_tokens, prompt_mask, cache, logits), samples_per_prompt)
  batch = prompt_tokens.shape[0]
  positions = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)  # of the first new token

  tiny = jnp.finfo(jnp.float32).tiny
  uniforms = jax.random.uniform(key, (new, batch), minval=tiny, maxval=1.0)
  token, logprob = sample_token(logits, uniforms[0], sampling)
  out_tokens = jnp.full((batch, new), sampling.pad_id, jnp.int32).at[:, 0].set(token)
  out_mask = jnp.zeros((batch, new), bool).at[:, 0].set(True)
  out_logprobs = jnp.zeros((batch, new), jnp.float32).at[:, 0].set(logprob)
  done = (token == sampling.eos_id) if sampling.eos_id is not None else jnp.zeros(batch, bool)

  def cond(carry):
    step, done = carry[0], carry[2]
    return (step < new) & ~jnp.all(done)

  def body(carry):
    step, cache, done, token, out_tokens, out_mask, out_logprobs = carry
    live = ~done
    hidden, cache = model(token[:, None], live[:, None],
                          positions=(positions + step - 1)[:, None], cache=cache)
    token, logprob = sample_token(model.logits(hidden[:, 0]), uniforms[step], sampling)
    token = jnp.where(live, token, sampling.pad_id)
    out_tokens = out_tokens.at[:, step].set(token)
    out_mask = out_mask.at[:, step].set(live)
    out_logprobs = out_logprobs.at[:, step].set(jnp.where(live, logprob, 0.0))
    if sampling.eos_id is not None:
      done = done | (token == sampling.eos_id)
    return step + 1, cache, done, token, out_tokens, out_mask, out_logprobs

  carry = (jnp.int32(1), cache, done, token, out_tokens, out_mask, out_logprobs)
  carry = jax.lax.while_loop(cond, body, carry)
  return SampleOutput(prompt_tokens, prompt_mask, *carry[4:])


_generate_jit = jax.jit(_generate, static_argnums=(0, 5, 6))


def generate(model: Transformer, prompt_tokens: jax.Array, prompt_mask: jax.Array | None,
             key: jax.Array, sampling: SamplingConfig,
             samples_per_prompt: int = 1) -> SampleOutput:
  """Sample ``sampling.max_new_tokens`` tokens after each prompt [batch, prompt_len],
  ``samples_per_prompt`` times per prompt (outputs [batch * samples_per_prompt, ...]).

  Compiled once per (model structure, shapes, sampling config, samples per prompt).
  Inputs keep their shardings: pass a batch sharded over the data axes
  (``rmjax.parallel``) to sample data-parallel.
  """
  if samples_per_prompt < 1:
    raise ValueError(f"samples_per_prompt={samples_per_prompt} must be >= 1")
  if prompt_mask is None:
    prompt_mask = jnp.ones(prompt_tokens.shape, bool)
  if prompt_tokens.shape != prompt_mask.shape:
    raise ValueError(f"prompt_tokens {prompt_tokens.shape} and prompt_mask "
                     f"{prompt_mask.shape} differ in shape")
  graphdef, state = nnx.split(model)
  return _generate_jit(graphdef, state, prompt_tokens, prompt_mask, key, sampling,
                       samples_per_prompt)
