"""Next-token cross-entropy against values worked out by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from rmjax.objectives import language_model

LN2, LN3 = np.log(2.0), np.log(3.0)


def test_two_tokens():
  """One prediction: logits (0, 0, ln 2) give token 2 the probability 2 / 4."""
  logits = jnp.array([[[0.0, 0.0, LN2], [5.0, -1.0, 2.0]]])  # [1, 2, 3]
  tokens = jnp.array([[0, 2]])
  mask = jnp.array([[True, True]])
  assert float(language_model.next_token_loss(logits, tokens, mask)) == pytest.approx(LN2)


def test_padding_and_the_mean_over_rows():
  """Row 0 is right-padded (its pad prediction drops out), row 1 has two predictions:
  the mean is over the three counted ones, (ln 2 + ln 3 + ln 3) / 3."""
  logits = jnp.array([
      [[0.0, 0.0, LN2], [99.0, 0.0, 0.0], [0.0, 0.0, 0.0]],  # 0 -> 2, then 2 -> pad
      [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],  # uniform: ln 3 each
  ])
  tokens = jnp.array([[0, 2, 1], [1, 1, 0]])
  mask = jnp.array([[True, True, False], [True, True, True]])
  total, count = language_model.next_token_sums(logits, tokens, mask)
  assert float(total) == pytest.approx(LN2 + 2 * LN3)
  assert int(count) == 3
  assert float(language_model.next_token_loss(logits, tokens, mask)) == pytest.approx(
      (LN2 + 2 * LN3) / 3)
  np.testing.assert_allclose(language_model.next_token_nll(logits, tokens)[0],
                             [LN2, 99.0 + np.log(1 + 2 * np.exp(-99.0))], rtol=1e-6)


def test_no_counted_prediction_gives_zero():
  logits = jnp.zeros((1, 2, 3))
  assert float(language_model.next_token_loss(logits, jnp.array([[1, 0]]),
                                              jnp.array([[True, False]]))) == 0.0


def test_response_loss_counts_only_the_response_tokens():
  # row 0: prompt of 2 tokens then 2 response tokens; row 1: prompt 1, response 1, padding
  logits = np.log(np.array([[[0.5, 0.25, 0.25]] * 4, [[0.2, 0.2, 0.6]] * 4]))
  tokens = np.array([[0, 1, 2, 1], [0, 2, 0, 0]])
  mask = np.array([[True] * 4, [True, True, False, False]])
  prompt_len = np.array([2, 1])
  # targets: row 0 positions 2, 3 (ids 2, 1: p 0.25 each); row 1 position 1 (id 2: p 0.6)
  want = -(2 * np.log(0.25) + np.log(0.6)) / 3
  got = language_model.response_loss(logits, tokens, mask, prompt_len)
  assert float(got) == pytest.approx(want, rel=1e-6)
  m = language_model.response_prediction_mask(mask, prompt_len)
  np.testing.assert_array_equal(m, [[False, True, True], [True, False, False]])


def test_response_loss_weighs_the_prompt_by_prompt_weight():
  logits = np.log(np.array([[[0.5, 0.25, 0.25]] * 3]))
  tokens, mask, prompt_len = np.array([[0, 1, 2]]), np.ones((1, 3), bool), np.array([2])
  # predictions: position 1 (prompt, id 1: p 0.25), position 2 (response, id 2: p 0.25)
  got = language_model.response_loss(logits, tokens, mask, prompt_len, prompt_weight=0.5)
  assert float(got) == pytest.approx(-(0.5 * np.log(0.25) + np.log(0.25)) / 1.5, rel=1e-6)
