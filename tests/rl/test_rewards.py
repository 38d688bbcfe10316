"""The score pipeline: per-member normalisation before the objective, one parameter per
objective, reward sources checked one by one."""

import numpy as np
import pytest

from rmjax.configs import rl as ppo_config
from rmjax.objectives import ensemble
from rmjax.rl import rewards
from rmjax.rm import reward_source


def _members(seed=0, rows=64, k=3):
  """Member rewards of reference samples and of candidate samples, [rows, K] each, with
  members that disagree (independent noise around a shared signal)."""
  rng = np.random.default_rng(seed)
  signal = rng.standard_normal((2, rows, 1))
  members = signal + 0.7 * rng.standard_normal((2, rows, k))
  return members[0].astype(np.float32), members[1].astype(np.float32)


def _scores(reference, candidates, cfg):
  stats = rewards.member_stats([reference])
  return rewards.objective_scores([candidates], cfg, stats)[:, 0]


def test_scaling_one_member_changes_neither_the_wco_choice_nor_the_uwo_ranking():
  reference, candidates = _members()
  scale = np.array([1.0, 10.0, 1.0], np.float32)  # member 1 on a 10x larger scale
  wco, uwo = rewards.ScoreConfig(objective="wco"), rewards.ScoreConfig(objective="uwo")
  base_wco, base_uwo = _scores(reference, candidates, wco), _scores(reference, candidates, uwo)
  scaled_wco = _scores(reference * scale, candidates * scale, wco)
  scaled_uwo = _scores(reference * scale, candidates * scale, uwo)
  assert np.argmax(scaled_wco) == np.argmax(base_wco)  # best-of-n's pick under WCO
  np.testing.assert_array_equal(np.argsort(scaled_uwo), np.argsort(base_uwo))
  np.testing.assert_allclose(scaled_wco, base_wco, rtol=1e-5, atol=1e-5)
  # Without the normalisation the same data does change both: the check above is not
  # vacuous (this is what combining raw member rewards did).
  raw = lambda cfg, r: rewards.objective_scores(
      [r], rewards.ScoreConfig(**{**cfg.__dict__, "member_norm": False}))[:, 0]
  assert np.argmax(raw(wco, candidates * scale)) != np.argmax(raw(wco, candidates))
  assert not np.array_equal(np.argsort(raw(uwo, candidates * scale)),
                            np.argsort(raw(uwo, candidates)))


def test_member_stats_are_the_reference_mean_and_std_per_member():
  reference, _ = _members(1)
  (stats,) = rewards.member_stats([reference * np.array([1.0, 5.0, 0.1]) + 3.0])
  expect = reference * np.array([1.0, 5.0, 0.1]) + 3.0
  np.testing.assert_allclose(stats["mu"], expect.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats["sigma"], expect.std(0), rtol=1e-5)
  (z,) = rewards.normalize_members([expect], (stats,))
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.std(0), 1.0, atol=1e-5)


def test_member_norm_without_statistics_is_refused():
  with pytest.raises(ValueError, match="member_norm=True needs the member statistics"):
    rewards.objective_scores([np.zeros((2, 3))], rewards.ScoreConfig())


def test_each_objective_has_its_own_parameter_with_the_documented_default():
  cfg = rewards.ScoreConfig.from_config(ppo_config.get_config().reward)
  assert cfg.uwo_lam == ensemble.UWO_LAM_PPO == 0.1  # Coste et al.'s PPO value
  assert cfg.brme_lam == ensemble.BRME_LAM == 0.5
  r = np.array([[0.0, 1.0, 5.0], [2.0, 2.0, 2.5]], np.float32)
  brme = rewards.ScoreConfig(objective="brme", uwo_lam=0.9, brme_lam=0.2, member_norm=False)
  np.testing.assert_allclose(rewards.objective_scores([r], brme)[:, 0],
                             ensemble.brme(r, lam=0.2), rtol=1e-6)
  uwo = rewards.ScoreConfig(objective="uwo", uwo_lam=0.3, brme_lam=0.9, member_norm=False)
  np.testing.assert_allclose(rewards.objective_scores([r], uwo)[:, 0],
                             ensemble.uncertainty_weighted(r, lam=0.3), rtol=1e-6)
  with pytest.raises(ValueError, match="reward.brme_lam=1.5"):
    rewards.ScoreConfig(objective="brme", brme_lam=1.5)


def _source(name, vocab, tokenizer="", task=""):
  return reward_source.FunctionSource(lambda t, m: t[:, :1] * 0.0, vocab, 1, tokenizer, task,
                                      name)


def test_every_source_is_checked_and_the_one_that_differs_is_named():
  a, b = _source("runs/a", 128, "/tok/a"), _source("runs/b", 96, "/tok/b")
  assert isinstance(a, reward_source.RewardSource)
  reward_source.check_compatible([a, a], vocab_size=128)
  with pytest.raises(ValueError, match=r"reward model runs/b: its vocab_size 96 differs from "
                                       r"the policy's 128"):
    reward_source.check_compatible([a, b], vocab_size=128)
  with pytest.raises(ValueError, match=r"reward model runs/b: its tokenizer '/tok/b' differs "
                                       r"from the first reward model runs/a's '/tok/a'"):
    reward_source.check_compatible([a, _source("runs/b", 128, "/tok/b")])
  with pytest.raises(ValueError, match=r"reward model runs/c: its task 'files'"):
    reward_source.check_compatible([_source("runs/a", 128, task="synthetic:{}"),
                                    _source("runs/c", 128, task="files")])


def test_weighted_sum_of_sources_and_its_checks():
  scores = np.array([[1.0, 10.0], [2.0, 20.0]], np.float32)
  cfg = rewards.ScoreConfig(weights=(0.5, 0.1))
  np.testing.assert_allclose(rewards.transform(scores, None, cfg), [1.5, 3.0])
  np.testing.assert_allclose(rewards.transform(scores, None, rewards.ScoreConfig()),
                             [11.0, 22.0])
  with pytest.raises(ValueError, match="3 entries for 2 reward sources"):
    rewards.transform(scores, None, rewards.ScoreConfig(weights=(1.0, 1.0, 1.0)))
  with pytest.raises(ValueError, match="not 'lsc'"):
    rewards.ScoreConfig(weights=(1.0,), transform="lsc")


def test_rule_source_scores_each_response_against_its_prompts_reference():
  from rmjax.rl.rule_rewards import RuleSource
  refs = {(1, 5): [7, 8], (1, 6, 6): [9]}
  source = RuleSource("exact_match", refs, vocab_size=16, eos_id=2)
  tokens = np.array([[1, 5, 7, 8, 2, 0], [1, 6, 6, 9, 9, 2], [1, 5, 7, 2, 0, 0]])
  mask = tokens > 0
  out = source(tokens, mask, np.array([2, 3, 2]))
  np.testing.assert_array_equal(out[:, 0], [1.0, 0.0, 0.0])  # EOS dropped; 9 9 != 9
  assert source.num_members == 1 and "0" in source.scale
  with pytest.raises(ValueError, match="must pass each row's prompt_len"):
    source(tokens, mask)
  with pytest.raises(ValueError, match="has no reference"):
    source(tokens, mask, np.array([1, 3, 2]))
