"""Shared-prompt packing gives the same rewards as encoding both joined sequences."""

import jax
import numpy as np
import pytest
from flax import nnx

from rmjax.data import schema, shared_prompt, synthetic
from rmjax.models import config as C
from rmjax.models.transformer import Transformer
from rmjax.train import rm_step


@pytest.fixture(scope="module")
def pairs():
  cfg = synthetic.SyntheticConfig(num_train_pairs=16, num_eval_pairs=4)
  arrays = synthetic.make_split(cfg, "train")
  return cfg, arrays


def test_packed_rewards_equal_separate_rewards(pairs):
  cfg, arrays = pairs
  model = Transformer(C.tiny_llama(vocab_size=cfg.vocab_size, num_reward_heads=1,
                                   lm_head=False), rngs=nnx.Rngs(0))
  packed = shared_prompt.pack(arrays, *shared_prompt.slot_sizes(arrays))
  separate = jax.jit(rm_step.pair_rewards)(model, arrays)
  shared = jax.jit(rm_step.pair_rewards)(model, packed)
  for a, b in zip(separate, shared):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  width = packed["packed_tokens"].shape[1]
  assert width < 2 * arrays[schema.CHOSEN_TOKENS].shape[1]


def test_mask_keeps_responses_apart():
  segments = np.array([[0, 0, 1, 1, 2, 2, -1]])
  mask = np.asarray(shared_prompt.attention_mask(segments))[0]
  assert mask[4, :2].all() and not mask[4, 2:4].any() and mask[4, 4]
  assert mask[3, :4].all() and not mask[3, 4:].any()
  assert not mask[:, 6].any() and not mask[6].any()


def test_pack_rejects_rows_that_do_not_fit(pairs):
  _, arrays = pairs
  prompt_slot, response_slot = shared_prompt.slot_sizes(arrays)
  with pytest.raises(ValueError, match="do not fit"):
    shared_prompt.pack(arrays, prompt_slot, response_slot - 1)
