"""Rule rewards against hand-computed values."""

import math

import pytest

from rmjax.objectives import rules


def test_bleu_by_hand():
  assert rules.sentence_bleu([5, 6, 7, 8], [5, 6, 7, 8]) == pytest.approx(1.0)
  # p1 3/4; smoothed p2 (2+1)/(3+1), p3 (1+1)/(2+1), p4 (0+1)/(1+1); equal lengths: BP 1
  want = (0.75 * 0.75 * (2 / 3) * 0.5) ** 0.25
  assert rules.sentence_bleu([1, 2, 3, 4], [1, 2, 3, 5]) == pytest.approx(want)
  # half the reference's length: BP exp(1 - 4/2); every (smoothed) precision is 1
  assert rules.sentence_bleu([1, 2], [1, 2, 3, 4]) == pytest.approx(math.exp(-1.0))
  # unsmoothed, a missing 4-gram gives 0; clipping: a repeated token counts once
  assert rules.sentence_bleu([1, 2, 3, 4], [1, 2, 3, 5], smoothing=False) == 0.0
  assert rules.sentence_bleu([7, 7, 7, 7], [7, 1, 2, 3], max_n=1) == pytest.approx(0.25)
  assert rules.sentence_bleu([], [1, 2]) == 0.0


def test_exact_match_and_dispatch():
  assert rules.score("exact_match", [1, 2], (1, 2)) == 1.0
  assert rules.score("exact_match", [1, 2], [1, 2, 3]) == 0.0
  with pytest.raises(ValueError, match="'rouge' is not one of"):
    rules.score("rouge", [1], [1])
