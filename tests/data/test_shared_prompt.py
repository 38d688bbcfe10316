"""Shared-prompt packing gives the same rewards as encoding both joined sequences."""

import jax
import numpy as np
import pytest
from flax import nnx

from rmjax.data import pipeline, schema, shared_prompt
from rmjax.models import config as C
from rmjax.models.transformer import Transformer
from rmjax.rm import batches as rm_batches
from rmjax.rm import step as rm_step
from rmjax.tasks import preference as synthetic


@pytest.fixture(scope="module")
def pairs():
  cfg = synthetic.SyntheticConfig(num_train_pairs=16, num_eval_pairs=4)
  arrays = synthetic.make_split(cfg, "train")
  return cfg, arrays


def test_packed_rewards_equal_separate_rewards(pairs):
  cfg, arrays = pairs
  model = Transformer(C.tiny_llama(vocab_size=cfg.vocab_size, num_reward_heads=1,
                                   lm_head=False), rngs=nnx.Rngs(0))
  packed = shared_prompt.pack(arrays, shared_prompt.packed_width(arrays))
  separate = jax.jit(rm_step.pair_rewards)(model, arrays)
  shared = jax.jit(rm_step.pair_rewards)(model, packed)
  for a, b in zip(separate, shared):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  width = packed["packed_tokens"].shape[1]
  assert width < 2 * arrays[schema.CHOSEN_TOKENS].shape[1]


def test_segments_sit_back_to_back():
  batch = {schema.CHOSEN_TOKENS: np.array([[5, 6, 7, 0]]),
           schema.CHOSEN_MASK: np.array([[1, 1, 1, 0]], bool),
           schema.REJECTED_TOKENS: np.array([[5, 6, 8, 9]]),
           schema.REJECTED_MASK: np.array([[1, 1, 1, 1]], bool),
           "prompt_len": np.array([2]), schema.MARGIN: np.zeros(1), schema.WEIGHT: np.ones(1)}
  packed = shared_prompt.pack(batch, 6)
  np.testing.assert_array_equal(packed["packed_tokens"][0], [5, 6, 7, 8, 9, 0])
  np.testing.assert_array_equal(packed["packed_segments"][0], [0, 0, 1, 2, 2, -1])
  np.testing.assert_array_equal(packed["packed_positions"][0], [0, 1, 2, 2, 3, 0])
  assert packed["chosen_last"][0] == 2 and packed["rejected_last"][0] == 4


def test_mask_keeps_responses_apart():
  segments = np.array([[0, 0, 1, 1, 2, 2, -1]])
  mask = np.asarray(shared_prompt.attention_mask(segments))[0]
  assert mask[4, :2].all() and not mask[4, 2:4].any() and mask[4, 4]
  assert mask[3, :4].all() and not mask[3, 4:].any()
  assert not mask[:, 6].any() and not mask[6].any()


def test_pack_rejects_rows_that_do_not_fit(pairs):
  _, arrays = pairs
  with pytest.raises(ValueError, match="do not fit"):
    shared_prompt.pack(arrays, shared_prompt.packed_width(arrays) - 1)


def test_bucket_width_rounds_up_to_the_multiple_and_caps():
  batch = {schema.CHOSEN_MASK: np.array([[1] * 50 + [0] * 14, [1] * 10 + [0] * 54], bool),
           schema.REJECTED_MASK: np.array([[1] * 40 + [0] * 24, [1] * 64], bool),
           "prompt_len": np.array([20, 5])}
  assert shared_prompt.packed_width(batch) == 70  # row 0: 20 + 30 + 20; row 1: 5 + 5 + 59
  assert shared_prompt.bucket_width(batch, 448) == 128
  assert shared_prompt.bucket_width(batch, 448, multiple=8) == 72
  assert shared_prompt.bucket_width(batch, 100) == 100


def test_truncated_width_holds_every_truncated_pair():
  rng = np.random.default_rng(0)
  seq_len, cap = 32, 12
  width = shared_prompt.truncated_width(seq_len, cap)
  widest = 0
  for _ in range(500):
    parts = [np.ones(n, np.int32) for n in rng.integers(1, 40, 3)]
    prompt, chosen, rejected = pipeline.truncate_pair(*parts, seq_len, cap)
    widest = max(widest, len(prompt) + len(chosen) + len(rejected))
  assert widest == width  # reached, never exceeded


def test_trainer_source_packs_each_batch_to_its_bucket():
  rows = np.arange(64)[None]
  batch = {schema.CHOSEN_TOKENS: np.ones((2, 64), np.int32),
           schema.CHOSEN_MASK: np.concatenate([rows < 50, rows < 10]),
           schema.REJECTED_TOKENS: np.ones((2, 64), np.int32),
           schema.REJECTED_MASK: np.concatenate([rows < 40, rows < 64]),
           "prompt_len": np.array([20, 5]), schema.MARGIN: np.zeros(2),
           schema.WEIGHT: np.ones(2)}

  class Source:
    def batch(self, step):
      return batch

  assert rm_batches.Packed(Source(), 448, bucket=True).batch(0)["packed_tokens"].shape == (2, 128)
  assert rm_batches.Packed(Source(), 448).batch(0)["packed_tokens"].shape == (2, 448)
