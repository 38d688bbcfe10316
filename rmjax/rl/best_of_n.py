"""Best-of-n sampling harness: N responses per prompt from a policy, each scored.

The output feeds ``rmjax.objectives.bon`` (the estimator math): for a reward-model ensemble and a
gold reward, score_fn returns e.g. ``{"members": [B, K], "gold": [B]}`` and
``bon.best_of_n_curves(out["members"], out["gold"], ns, "uwo", lam=0.5)`` gives the curves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rmjax.models.sampler import SamplingConfig, generate
from rmjax.models.transformer import Transformer

ScoreFn = Callable[[jax.Array, jax.Array, jax.Array], Any]


@jax.jit
def right_padded(tokens, mask):
  """Real tokens first, in order (the layout of the training data and the synthetic gold
  reward); generate's output has the prompt's padding on the left of the prompt block."""
  order = jnp.argsort(~mask, axis=1, stable=True)
  return jnp.take_along_axis(tokens, order, axis=1), jnp.take_along_axis(mask, order, axis=1)


def best_of_n_scores(key: jax.Array, model: Transformer, sampling: SamplingConfig,
                     prompt_tokens, prompt_mask, num_samples: int, score_fn: ScoreFn,
                     chunk_size: int = 512):
  """Sample ``num_samples`` responses to each prompt and score every one.

  The P·N (prompt, sample) rows are generated and scored ``chunk_size`` at a time, so
  memory stays at one chunk's sequences and the sampler compiles once (the last chunk is
  filled by repeating rows, then cut). Chunk c samples with ``fold_in(key, c)``: results
  depend on key and chunk_size, not on anything else.

  Args:
    key: jax.random key.
    model: the policy (a ``Transformer`` with an LM head), sampled with ``sampling``.
    sampling: ``SamplingConfig``; give it an ``eos_id`` so that responses can end early.
    prompt_tokens: [P, L] int prompts (padding anywhere ``prompt_mask`` is False).
    prompt_mask: [P, L] bool, or None for all real.
    num_samples: N >= 1 responses per prompt.
    score_fn: ``score_fn(tokens, mask, prompt_len)`` on tokens/mask [B, L + new] (prompt
      then response, real tokens first, right-padded) and prompt_len [B] int32, returning
      an array [B, ...] or a pytree of them, e.g. ensemble member rewards [B, K]; pass a
      jitted function (it is called once per chunk).
    chunk_size: rows per generate/score call.

  Returns:
    score_fn's structure with numpy leaves [P, N, ...]: sample j of prompt p is [p, j].
  """
  prompt_tokens = np.asarray(prompt_tokens)
  if prompt_tokens.ndim != 2:
    raise ValueError(f"prompt_tokens must be [prompts, prompt_len]; got {prompt_tokens.shape}")
  prompt_mask = (np.ones(prompt_tokens.shape, bool) if prompt_mask is None
                 else np.asarray(prompt_mask, bool))
  if prompt_mask.shape != prompt_tokens.shape:
    raise ValueError(f"prompt_mask {prompt_mask.shape} and prompt_tokens "
                     f"{prompt_tokens.shape} differ in shape")
  if num_samples < 1:
    raise ValueError(f"num_samples={num_samples} must be >= 1")
  if chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size} must be >= 1")
  num_prompts = prompt_tokens.shape[0]
  rows = num_prompts * num_samples
  chunk = min(chunk_size, rows)
  prompt_len = prompt_mask.sum(axis=1).astype(np.int32)
  shared = math.gcd(chunk, num_samples)

  outs = []
  for c, start in enumerate(range(0, rows, chunk)):
    which = (np.arange(start, start + chunk) % rows) // num_samples  # prompt of each row
    # Chunks start at multiples of `chunk` and prompts own runs of `num_samples` rows,
    # so every aligned group of `shared` rows is one prompt: prefill it once.
    out = generate(model, prompt_tokens[which[::shared]], prompt_mask[which[::shared]],
                   jax.random.fold_in(key, c), sampling, samples_per_prompt=shared)
    tokens, mask = right_padded(*out.sequences())
    scores = score_fn(tokens, mask, jnp.asarray(prompt_len[which]))
    keep = min(chunk, rows - start)
    outs.append(jax.tree.map(lambda x, keep=keep: np.asarray(x)[:keep], scores))
  return jax.tree.map(
      lambda *xs: np.concatenate(xs).reshape((num_prompts, num_samples) + xs[0].shape[1:]),
      *outs)
