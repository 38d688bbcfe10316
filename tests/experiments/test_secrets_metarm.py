"""The pure helpers of experiments/secrets_metarm.py against hand-computed values (the
end-to-end run is in test_secrets_rm.py)."""

import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from experiments import secrets_metarm  # noqa: E402
from rmjax.data import schema  # noqa: E402
from rmjax.objectives import bt  # noqa: E402


def test_gold_correct_is_per_pair_gold_agreement():
  model = np.array([0.3, -0.2, 0.0, 1.0, 0.0])
  gold = np.array([1.0, 2.0, 0.0, -0.5, 0.1])
  correct = secrets_metarm.gold_correct(model, gold)
  assert correct.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]  # a tie agrees only with a tie
  assert correct.mean() == pytest.approx(float(bt.gold_agreement(model, 0 * model, gold,
                                                                 0 * gold)))
  with pytest.raises(ValueError, match="model_delta, gold_delta"):
    secrets_metarm.gold_correct(model, gold[:3])


def test_score_shift_in_pooled_standard_deviations():
  """Two prompts of four responses; the top two's mean minus all four's, over the std of
  all eight scores (population std of [4, 2, 0, -2, 3, 1, 1, -1] is sqrt(3.5))."""
  scores = np.array([[4.0, 2.0, 0.0, -2.0], [3.0, 1.0, 1.0, -1.0]])
  shift = secrets_metarm.score_shift(scores, 2)
  np.testing.assert_allclose(shift, [(3 - 1) / np.sqrt(3.5), (2 - 1) / np.sqrt(3.5)])
  np.testing.assert_allclose(secrets_metarm.score_shift(scores, 4), [0.0, 0.0], atol=1e-12)
  with pytest.raises(ValueError, match="scores, top"):
    secrets_metarm.score_shift(scores, 5)


def test_shifted_pairs_take_the_top_two_and_drop_gold_ties():
  tokens = np.arange(3 * 3 * 2).reshape(3, 3, 2)
  ranked = {"tokens": tokens, "mask": tokens > 0,
            "gold": np.array([[1.0, 0.5, 9.0], [2.0, 2.0, 0.0], [0.0, 1.0, 3.0]])}
  pairs = secrets_metarm.shifted_pairs(ranked)
  np.testing.assert_array_equal(pairs[schema.CHOSEN_TOKENS], tokens[[0, 2], 0])
  np.testing.assert_array_equal(pairs[schema.REJECTED_TOKENS], tokens[[0, 2], 1])
  assert pairs[schema.GOLD_CHOSEN].tolist() == [1.0, 0.0]
  assert pairs[schema.GOLD_REJECTED].tolist() == [0.5, 1.0]
