"""experiments/stats.py against hand-computed and independent values: the two-stage bootstrap,
paired differences, Holm's correction, verdicts, records, and the ensemble precondition."""

import json
import pathlib
import sys
import warnings

import numpy as np
import pytest
from scipy import stats as sps

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from experiments import stats  # noqa: E402

Z95 = sps.norm.ppf(0.975)


def half_width(result):
  return (result["high"] - result["low"]) / 2


# --- hierarchical_bootstrap ---------------------------------------------------------------

def test_constant_values_give_a_degenerate_interval():
  for values in (np.full((3, 7), 2.5), [[2.5] * 4, [2.5] * 9]):
    out = stats.hierarchical_bootstrap(values, num_resamples=200)
    assert out["mean"] == out["low"] == out["high"] == 2.5


def test_spread_is_the_two_stage_variance_and_wider_than_normal_theory_for_iid_items():
  seeds, items = 20, 200
  x = np.random.default_rng(1).normal(size=(seeds, items))
  out = stats.hierarchical_bootstrap(x)
  # For the mean, a resample's variance is (var0(seed means) + mean(var0 within) / items)
  # / seeds: the seed stage and the item stage each add about sigma^2 / (seeds * items).
  sd = np.sqrt((x.mean(1).var() + x.var(1).mean() / items) / seeds)
  assert half_width(out) == pytest.approx(Z95 * sd, rel=0.08)
  assert out["mean"] == pytest.approx(x.mean(), abs=1e-12)
  normal = Z95 * x.std(ddof=1) / np.sqrt(x.size)
  assert 1.25 < half_width(out) / normal < 1.6  # about sqrt(2): conservative, as documented
  assert (out["num_seeds"], out["num_items"]) == (seeds, seeds * items)


def test_one_seed_is_the_item_bootstrap_and_matches_normal_theory():
  x = np.random.default_rng(2).exponential(size=(1, 2000))
  out = stats.hierarchical_bootstrap(x)
  assert half_width(out) == pytest.approx(Z95 * x.std(ddof=1) / np.sqrt(x.size), rel=0.08)
  center = (out["low"] + out["high"]) / 2
  assert center == pytest.approx(x.mean(), abs=0.15 * half_width(out))


def test_a_shift_between_seeds_widens_the_interval_beyond_the_flat_bootstrap():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(6, 100)) + np.arange(6.0)[:, None]  # each seed shifted as a whole
  hier = stats.hierarchical_bootstrap(x)
  flat = stats.hierarchical_bootstrap(x.reshape(1, -1))  # one pool of 600 items
  assert hier["mean"] == pytest.approx(flat["mean"])
  assert half_width(hier) > 5 * half_width(flat)
  # the seed means are 0..5 (+ noise): their spread, not the items', sets the width
  sd_seeds = np.sqrt(x.mean(1).var() / 6)
  assert half_width(hier) == pytest.approx(Z95 * sd_seeds, rel=0.25)


def test_ragged_seeds_are_weighted_equally_and_statistic_is_per_seed():
  out = stats.hierarchical_bootstrap([[1.0, 2.0, 3.0], [4.0, 5.0]], num_resamples=500)
  assert out["mean"] == (2.0 + 4.5) / 2
  assert (out["num_seeds"], out["num_items"]) == (2, 5)
  assert 1.0 <= out["low"] < out["mean"] < out["high"] <= 5.0
  med = stats.hierarchical_bootstrap([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]], np.median,
                                     num_resamples=200)
  assert med["mean"] == 3.0  # medians 2 and 4


def test_the_seed_argument_fixes_the_result():
  x = np.random.default_rng(4).normal(size=(4, 30))
  assert stats.hierarchical_bootstrap(x, seed=5) == stats.hierarchical_bootstrap(x, seed=5)
  assert stats.hierarchical_bootstrap(x, seed=5) != stats.hierarchical_bootstrap(x, seed=6)


@pytest.mark.parametrize("values, kwargs, field", [
    (np.ones(5), {}, "values"),
    ([[1.0, np.nan]], {}, "values"),
    ([[1.0], []], {}, "values"),
    ([], {}, "values"),
    (np.ones((2, 3)), {"confidence": 1.0}, "confidence"),
    (np.ones((2, 3)), {"num_resamples": 0}, "num_resamples"),
    (np.ones((2, 3)), {"statistic": lambda x, axis: x}, "statistic"),
])
def test_bad_bootstrap_input_names_the_argument(values, kwargs, field):
  with pytest.raises(ValueError, match=field):
    stats.hierarchical_bootstrap(values, **kwargs)


# --- paired_difference --------------------------------------------------------------------

def test_identical_arms_differ_by_exactly_zero():
  x = np.random.default_rng(5).normal(size=(5, 40))
  out = stats.paired_difference(x, x.copy())
  assert out["mean"] == out["low"] == out["high"] == 0.0
  assert out["p_value"] == 1.0 and out["effect_size"] == 0.0


def test_a_clear_shift_is_significant_with_its_sign():
  rng = np.random.default_rng(6)
  b = rng.normal(size=(5, 60))
  a = b + 0.5 + 0.3 * rng.normal(size=b.shape)
  up = stats.paired_difference(a, b)
  assert up["p_value"] < 0.01 and up["low"] > 0 and up["mean"] == pytest.approx(0.5, abs=0.1)
  assert up["p_value"] == 1 / 2000  # clipped at 1 / num_resamples: no resample reached 0
  down = stats.paired_difference(b, a)
  assert down["high"] < 0 and down["mean"] == -up["mean"]
  assert stats.verdict(up, +1, True) == stats.REPRODUCED
  assert stats.verdict(down, -1, True) == stats.REPRODUCED


def test_what_the_arms_share_cancels():
  rng = np.random.default_rng(7)
  b = rng.normal(size=(4, 50)) * 10 + rng.normal(size=(4, 1)) * 10  # large shared noise
  a = b + 0.25
  paired = stats.paired_difference(a, b, num_resamples=300)
  assert paired["low"] == pytest.approx(0.25, abs=1e-12)
  assert paired["high"] == pytest.approx(0.25, abs=1e-12)
  assert half_width(stats.hierarchical_bootstrap(a, num_resamples=300)) > 1.0


def test_effect_size_is_d_z_over_pooled_items():
  a = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
  out = stats.paired_difference(a, np.zeros_like(a), num_resamples=200)
  # differences 1..5 pooled: mean 3, sum of squares 10 over 5 dof -> sd sqrt(2)
  assert out["effect_size"] == pytest.approx(3 / np.sqrt(2))
  const = stats.paired_difference(a, a - 2.0, num_resamples=50)
  assert const["effect_size"] == np.inf


def test_p_value_matches_the_normal_approximation_of_the_resamples():
  rng = np.random.default_rng(8)
  seeds, items = 10, 100
  d = rng.normal(size=(seeds, items))
  d += 1.5 * np.sqrt((d.mean(1).var() + d.var(1).mean() / items) / seeds) - d.mean()
  out = stats.paired_difference(d, np.zeros_like(d), num_resamples=4000)
  assert out["p_value"] == pytest.approx(2 * sps.norm.sf(1.5), abs=0.04)  # 0.134


def test_paired_arms_must_have_the_same_shape():
  with pytest.raises(ValueError, match="b"):
    stats.paired_difference(np.ones((2, 3)), np.ones((2, 4)))
  with pytest.raises(ValueError, match="b"):
    stats.paired_difference([[1.0, 2.0], [3.0]], [[1.0], [2.0, 3.0]])


# --- holm ---------------------------------------------------------------------------------

def test_holm_matches_hand_computation():
  out = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03}, alpha=0.05)
  # sorted a, c, b: 3 * 0.01 = 0.03; 2 * 0.03 = 0.06; 1 * 0.04 = 0.04 -> max(0.06, 0.04)
  assert list(out) == ["a", "b", "c"]
  assert {k: v["p_adjusted"] for k, v in out.items()} == pytest.approx(
      {"a": 0.03, "b": 0.06, "c": 0.06})
  assert {k: v["reject"] for k, v in out.items()} == {"a": True, "b": False, "c": False}
  assert out["b"]["p"] == 0.04


def test_holm_caps_at_one_and_handles_edge_cases():
  out = stats.holm({"x": 0.6, "y": 0.5})
  assert out["x"]["p_adjusted"] == out["y"]["p_adjusted"] == 1.0
  assert stats.holm({"only": 0.05})["only"] == {"p": 0.05, "p_adjusted": 0.05, "reject": True}
  assert stats.holm({}) == {}
  with pytest.raises(ValueError, match="p_values"):
    stats.holm({"x": float("nan")})
  with pytest.raises(ValueError, match="alpha"):
    stats.holm({"x": 0.1}, alpha=0.0)


# --- verdicts and records -----------------------------------------------------------------

@pytest.mark.parametrize("low, high, sign, ok, partly, expected", [
    (0.1, 0.5, 1, True, False, stats.REPRODUCED),
    (0.1, 0.5, 1, True, True, stats.PARTLY),
    (-0.5, -0.1, -1, True, False, stats.REPRODUCED),
    (-0.1, 0.5, 1, True, False, stats.NOT_REPRODUCED),  # contains 0: not detected
    (-0.1, 0.5, 1, True, True, stats.NOT_REPRODUCED),
    (0.0, 0.5, 1, True, False, stats.NOT_REPRODUCED),  # an end at 0 contains it
    (0.1, 0.5, -1, True, False, stats.NOT_REPRODUCED),  # wrong side
    (0.1, 0.5, 1, False, False, stats.NOT_TESTABLE),
    (-0.5, -0.1, 1, False, True, stats.NOT_TESTABLE),
])
def test_verdict_reads_the_interval(low, high, sign, ok, partly, expected):
  # the mean is on the claimed side in every case: only the interval decides
  assert stats.verdict({"mean": 0.3 * sign, "low": low, "high": high}, sign, ok, partly) \
      == expected


def test_verdict_rejects_bad_input_and_every_verdict_is_defined():
  with pytest.raises(ValueError, match="expected_sign"):
    stats.verdict({"low": 0.1, "high": 0.2}, 0, True)
  with pytest.raises(ValueError, match="high"):
    stats.verdict({"low": 0.1}, 1, True)
  verdicts = {stats.REPRODUCED, stats.PARTLY, stats.NOT_REPRODUCED, stats.NOT_TESTABLE}
  assert set(stats.DEFINITIONS) == verdicts and len(verdicts) == 4
  assert all(text.endswith(".") and text.count(". ") == 0 for text in stats.DEFINITIONS.values())


def test_records_are_plain_json_and_failed_controls_break_the_harness():
  pre = stats.precondition("correlation", np.float32(0.25), np.bool_(True), "members differ")
  assert pre == {"name": "correlation", "value": 0.25, "ok": True, "detail": "members differ"}
  assert type(pre["ok"]) is bool and type(pre["value"]) is float
  controls = [stats.control("a", False, "gold moved"), stats.control("b", True, "ok", [1, 2]),
              stats.control("c", np.bool_(False), "", value=np.arange(2))]
  assert controls[0]["value"] is None and controls[2]["value"] == [0, 1]
  json.dumps([pre, *controls])
  assert stats.harness_message(controls) == "harness broken: a, c"
  assert stats.harness_message(controls[1:2]) is None
  assert stats.harness_message([]) is None


# --- disagreement_error_correlation -------------------------------------------------------

def test_members_that_disagree_where_the_mean_is_wrong_correlate():
  rng = np.random.default_rng(9)
  n = 500
  gold = rng.normal(size=n)
  # per-sample error size, shared by the mean's bias (random sign, so that standardising
  # does not remove it) and the members' spread
  scale = rng.uniform(0.0, 1.0, size=n) * rng.choice([-1.0, 1.0], size=n)
  members = gold[:, None] + scale[:, None] * np.array([0.0, 1.0, 2.0, 3.0])
  out = stats.disagreement_error_correlation(members, gold)
  assert out["pearson"] > 0.5 and out["spearman"] > 0.5
  # independent value: scipy on the vectors as the docstring defines them
  z = lambda v: (v - v.mean()) / v.std()
  dis, err = members.std(1), np.abs(z(members.mean(1)) - z(gold))
  assert out["pearson"] == pytest.approx(sps.pearsonr(dis, err)[0], abs=1e-12)
  assert out["spearman"] == pytest.approx(sps.spearmanr(dis, err)[0], abs=1e-12)


def test_disagreement_independent_of_error_does_not_correlate():
  rng = np.random.default_rng(10)
  gold = rng.normal(size=4000)
  members = gold[:, None] + rng.normal(size=(4000, 5))  # Gaussian: sample mean ⟂ sample std
  out = stats.disagreement_error_correlation(members, gold)
  assert abs(out["pearson"]) < 0.1 and abs(out["spearman"]) < 0.1


def test_members_sharing_their_errors_give_zero_without_warnings():
  rng = np.random.default_rng(11)
  gold = rng.normal(size=100)
  shared = gold + rng.normal(size=100)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    same = stats.disagreement_error_correlation(np.stack([shared] * 3, 1), gold)
    offset = stats.disagreement_error_correlation(
        shared[:, None] + np.array([0.1, 0.2, 0.7]), gold)  # constant disagreement
    flat = stats.disagreement_error_correlation(np.zeros((100, 2)), np.zeros(100))
  assert same == offset == flat == {"pearson": 0.0, "spearman": 0.0}


def test_bad_correlation_input_names_the_argument():
  with pytest.raises(ValueError, match="member_rewards"):
    stats.disagreement_error_correlation(np.ones((5, 1)), np.ones(5))
  with pytest.raises(ValueError, match="gold"):
    stats.disagreement_error_correlation(np.ones((5, 2)), np.ones(4))


def test_corrected_verdict_needs_the_correction_to_reject():
  up = {"low": 0.1, "high": 0.5}
  assert stats.corrected_verdict(up, {"reject": True}, 1, True) == stats.REPRODUCED
  assert stats.corrected_verdict(up, {"reject": False}, 1, True) == stats.NOT_REPRODUCED
  assert stats.corrected_verdict(up, {"reject": True}, 1, False) == stats.NOT_TESTABLE
  assert stats.corrected_verdict(up, {"reject": True}, -1, True) == stats.NOT_REPRODUCED
