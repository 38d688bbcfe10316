"""The best-of-n harness on a tiny random Transformer: shapes, layout, chunking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmjax.models import config as C
from rmjax.models.sampler import SamplingConfig
from rmjax.models.transformer import Transformer
from rmjax.objectives import bon
from rmjax.rl.best_of_n import best_of_n_scores

PROMPTS, LEN, NEW, N, K = 3, 5, 4, 5, 3


@jax.jit
def score_fn(tokens, mask, prompt_len):
  """K toy 'members' (token-id sums with different weights), a 'gold' and the raw rows."""
  resp = mask & (jnp.arange(tokens.shape[1])[None] >= prompt_len[:, None])
  ids = jnp.where(resp, tokens, 0).astype(jnp.float32)
  members = jnp.stack([jnp.sum(ids * w, axis=1) for w in (1.0, -0.5, 2.0)], axis=-1)
  return {"members": members, "gold": jnp.sum(resp, axis=1).astype(jnp.float32),
          "tokens": tokens, "mask": mask, "prompt_len": prompt_len}


def tiny_policy():
  """A random Transformer with numpy-drawn weights: eager NNX init costs ~7 s on CPU."""
  cfg = C.tiny_llama(vocab_size=32, d_model=32, n_layers=1, d_ff=64)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  state = jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), state)
  return nnx.merge(graphdef, state)


@pytest.mark.parametrize("chunk_size", [4, 10])
def test_harness_shapes_layout_and_estimator_input(chunk_size):
  """chunk_size 4: rows of different prompts per chunk; 10: chunks of whole prompts,
  each prefilled once and shared by its N samples."""
  model = tiny_policy()
  sampling = SamplingConfig(max_new_tokens=NEW, eos_id=1)
  prompts = np.arange(PROMPTS * LEN, dtype=np.int32).reshape(PROMPTS, LEN) + 2
  prompt_mask = np.ones((PROMPTS, LEN), bool)
  prompt_mask[1, 3:] = False  # prompt 1 has 3 real tokens, right-padded
  # 15 rows in chunks: the last chunk is filled by repetition and cut.
  out = best_of_n_scores(jax.random.key(0), model, sampling, prompts, prompt_mask, N,
                         score_fn, chunk_size=chunk_size)

  assert out["members"].shape == (PROMPTS, N, K)
  assert out["gold"].shape == (PROMPTS, N)
  assert out["tokens"].shape == out["mask"].shape == (PROMPTS, N, LEN + NEW)
  np.testing.assert_array_equal(out["prompt_len"], np.array([[5], [3], [5]]).repeat(N, 1))
  for p in range(PROMPTS):
    real = prompts[p][prompt_mask[p]]
    for j in range(N):
      mask = out["mask"][p, j]
      length = mask.sum()
      assert mask[:length].all() and not mask[length:].any()  # right-padded
      np.testing.assert_array_equal(out["tokens"][p, j, :len(real)], real)  # own prompt
      assert 1 <= length - len(real) <= NEW
  # N independent samples per prompt, not one sample repeated.
  assert len({out["tokens"][0, j].tobytes() for j in range(N)}) > 1

  curves = bon.best_of_n_curves(out["members"], out["gold"], [1, 2, N], "wco")
  assert curves["gold"].shape == curves["proxy"].shape == (PROMPTS, 3)
  assert np.all(np.isfinite(curves["gold"]))
