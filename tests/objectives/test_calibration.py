"""ECE and overconfidence of a stated confidence, against hand-computed values."""

import numpy as np
import pytest

from rmjax.objectives import calibration


def test_ece_by_hand():
  # bins of width 0.5: {0.2, 0.4} -> acc 1/2, conf 0.3; {0.9, 1.0} -> acc 1/2, conf 0.95
  c = np.array([0.2, 0.4, 0.9, 1.0])
  y = np.array([1.0, 0.0, 1.0, 0.0])
  want = 0.5 * abs(0.5 - 0.3) + 0.5 * abs(0.5 - 0.95)
  assert float(calibration.ece(c, y, num_bins=2)) == pytest.approx(want)
  # eleven bins give every level k/10 its own bin: all correct at 1.0 is perfect
  assert float(calibration.ece(np.ones(4), np.ones(4), num_bins=11)) == pytest.approx(0.0)
  assert float(calibration.ece(np.zeros(4), np.ones(4), num_bins=11)) == pytest.approx(1.0)


def test_overconfidence_and_shapes():
  assert float(calibration.overconfidence([0.9, 0.7], [1.0, 0.0])) == pytest.approx(0.3)
  with pytest.raises(ValueError, match="equal-length"):
    calibration.ece(np.ones(3), np.ones(2))
