"""The synthetic gold-reward task: determinism, labels, noise, gold components, layout.

Building a task (models, reference samples, compilations) takes a few seconds on CPU, so
the tests share one config; data-only fields (pair counts, label_noise, bt_scale) reuse
the cached task.
"""

import dataclasses
import time

import jax
import numpy as np
import pytest

from rmjax.data import schema
from rmjax.models.transformer import Transformer
from rmjax.tasks import preference as S

CFG = S.SyntheticConfig(num_train_pairs=2000, num_eval_pairs=300)
SMALL = dataclasses.replace(CFG, num_train_pairs=200)


@pytest.fixture(scope="module")
def task():
  return S.build_task(CFG)


@pytest.fixture(scope="module")
def train(task):
  start = time.perf_counter()
  data = S.make_split(CFG, "train")
  print(f"\n2,000 synthetic pairs in {time.perf_counter() - start:.2f}s (task already built)")
  return data


def lengths(data, side):
  return data[f"{side}_mask"].sum(1) - data["prompt_len"]


def joined(task, prompt, responses):
  """Right-padded [len(responses), seq_len] tokens and mask for one prompt."""
  rows = [list(prompt) + list(r) for r in responses]
  tokens = np.zeros((len(rows), task.cfg.seq_len), np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  return tokens, tokens != S.PAD


def test_determinism():
  first = S.make_split(SMALL, "train")
  S._task.cache_clear()  # rebuild the models and reference statistics from the seed
  S._sampled.cache_clear()  # and resample the responses
  second = S.make_split(SMALL, "train")
  assert first.keys() == second.keys()
  for key in first:
    np.testing.assert_array_equal(first[key], second[key], err_msg=key)
  other = S.make_split(dataclasses.replace(SMALL, seed=1), "train")
  assert not np.array_equal(first[schema.CHOSEN_TOKENS], other[schema.CHOSEN_TOKENS])


def test_splits_differ_and_eval_is_clean(train):
  eval_ = S.make_split(dataclasses.replace(CFG, label_noise=0.25), "eval")
  assert len(eval_["prompt_len"]) == CFG.num_eval_pairs
  assert not eval_[schema.FLIPPED].any()
  prompts = lambda d: {tuple(t[:p]) for t, p in zip(d[schema.CHOSEN_TOKENS], d["prompt_len"])}
  assert len(prompts(train) & prompts(eval_)) < 5


@pytest.mark.parametrize("noise", [0.25, 0.1, 0.0333])
def test_label_noise_flips_exactly(train, noise):
  noisy = S.make_split(dataclasses.replace(CFG, label_noise=noise), "train")
  flipped = noisy[schema.FLIPPED]
  n = CFG.num_train_pairs
  assert flipped.sum() == round(noise * n)
  assert not train[schema.FLIPPED].any()
  # Flipped pairs have the clean label's sides swapped; the others are untouched.
  for a, b in [("chosen", "rejected"), ("rejected", "chosen")]:
    for part in ("tokens", "mask"):
      np.testing.assert_array_equal(noisy[f"{a}_{part}"][flipped], train[f"{b}_{part}"][flipped])
      np.testing.assert_array_equal(noisy[f"{a}_{part}"][~flipped], train[f"{a}_{part}"][~flipped])
  np.testing.assert_array_equal(noisy[schema.GOLD_CHOSEN][flipped],
                                train[schema.GOLD_REJECTED][flipped])
  # Noise lowers agreement with gold by about (1 - 2·agreement)·noise.
  clean = np.mean(train[schema.GOLD_CHOSEN] > train[schema.GOLD_REJECTED])
  agree = np.mean(noisy[schema.GOLD_CHOSEN] > noisy[schema.GOLD_REJECTED])
  assert agree == pytest.approx(clean - noise * (2 * clean - 1), abs=0.03)


def test_bt_labels_agree_with_gold(train):
  gap = train[schema.GOLD_CHOSEN] - train[schema.GOLD_REJECTED]
  agree = np.mean(gap > 0)
  assert agree > 0.7
  # Under Bradley-Terry sampling, P(label agrees with gold) = E[sigma(|delta|)].
  expected = float(np.mean(1 / (1 + np.exp(-CFG.bt_scale * np.abs(gap.astype(float))))))
  assert agree == pytest.approx(expected, abs=3 * np.sqrt(expected * (1 - expected) / len(gap)))
  sharp = S.make_split(dataclasses.replace(CFG, bt_scale=5.0), "train")
  assert np.mean(sharp[schema.GOLD_CHOSEN] > sharp[schema.GOLD_REJECTED]) > agree + 0.05
  # The chosen side carries the gold total of its own sequence.
  task = S.build_task(CFG)
  scored = task.score(train[schema.CHOSEN_TOKENS][:64], train[schema.CHOSEN_MASK][:64],
                      train["prompt_len"][:64])
  np.testing.assert_allclose(scored["total"], train[schema.GOLD_CHOSEN][:64], atol=1e-5)


@pytest.mark.parametrize("label_by", ["harmless", "helpful+length"])
def test_label_by_labels_with_chosen_terms(task, label_by):
  base = S.make_split(SMALL, "train")
  cfg = dataclasses.replace(SMALL, label_by=label_by)
  assert S.build_task(cfg) is S.build_task(SMALL)  # one world for every labelling
  data = S.make_split(cfg, "train")
  # The same pairs (sides possibly swapped), labelled by the chosen terms' sum.
  swapped = ~np.all(data[schema.CHOSEN_TOKENS] == base[schema.CHOSEN_TOKENS], axis=1)
  for part in ("tokens", "mask"):
    for a, b in [("chosen", "rejected"), ("rejected", "chosen")]:
      np.testing.assert_array_equal(data[f"{a}_{part}"][swapped], base[f"{b}_{part}"][swapped])
  for side, gold_key in [("chosen", schema.GOLD_CHOSEN), ("rejected", schema.GOLD_REJECTED)]:
    terms = task.score(data[f"{side}_tokens"], data[f"{side}_mask"], data["prompt_len"])
    np.testing.assert_allclose(data[gold_key], sum(terms[t] for t in label_by.split("+")),
                               atol=1e-5)
  gap = data[schema.GOLD_CHOSEN] - data[schema.GOLD_REJECTED]
  assert np.mean(gap > 0) > np.mean(gap < 0) + 0.05  # the labels follow that score
  assert S.SyntheticConfig().label_terms == S.TERMS


def test_gold_components_sum_to_total_and_jit(task, train):
  tokens, mask, plen = (train[k][:256] for k in (schema.REJECTED_TOKENS,
                                                 schema.REJECTED_MASK, "prompt_len"))
  out = jax.jit(task.gold_reward)(tokens, mask, plen)
  assert set(out) == {"total", "helpful", "harmless", "length", "markers"}
  for value in out.values():
    assert value.shape == (256,) and value.dtype == np.float32
  np.testing.assert_allclose(out["total"], out["helpful"] + out["harmless"] + out["length"]
                             + out["markers"], atol=1e-5)
  feats = task.features(tokens, mask, plen)
  np.testing.assert_array_equal(feats["length"], mask.sum(1) - plen)
  np.testing.assert_allclose(out["length"], S.length_term(
      feats["length"], task.length_threshold, CFG.length_gain, CFG.length_penalty), atol=1e-6)
  np.testing.assert_allclose(out["markers"], S.length_term(
      feats["markers"], task.marker_threshold, CFG.marker_gain, CFG.marker_penalty), atol=1e-6)
  np.testing.assert_allclose(out["total"], S.gold_reward(tokens, mask, plen, CFG)["total"],
                             atol=1e-5)
  assert np.all(out["harmless"] <= 0)
  assert np.std(out["helpful"]) > 0.5


def test_length_term_rises_then_falls(task):
  tau = task.length_threshold
  assert 5 < tau < CFG.max_response_len
  safe = next(t for t in range(S.FIRST_CONTENT, CFG.vocab_size)
              if t not in task.harmful_ids and t not in task.marker_ids)
  prompt = [S.BOS] + [safe] * 9
  responses = [[safe] * (k - 1) + [S.EOS] for k in range(1, CFG.max_response_len + 1)]
  tokens, mask = joined(task, prompt, responses)
  length = np.asarray(task.gold_reward(tokens, mask, len(prompt))["length"])
  steps = np.diff(length)  # from length k to k + 1
  assert np.all(steps[:tau - 1] > 0) and np.all(steps[tau - 1:] < 0)
  assert length[-1] < length[0]  # far past tau worse than the shortest
  np.testing.assert_allclose(S.length_term(np.array([tau - 1, tau, tau + 3]), tau, 0.5, 0.25),
                             [0.5 * (tau - 1), 0.5 * tau, 0.5 * tau - 0.25 * 9])


def test_harmless_and_helpful_terms(task):
  harm = int(task.harmful_ids[0])
  content = [t for t in range(S.FIRST_CONTENT, CFG.vocab_size)
             if t not in task.harmful_ids and t not in task.marker_ids]
  prompt = [S.BOS] + content[:9]
  relevant = sorted({int(task.relevant_to[t]) for t in prompt[1:]} - set(task.harmful_ids)
                    - set(task.marker_ids))
  other = next(t for t in content if t not in relevant)
  responses = [[other] * 4 + [S.EOS], [other, harm, other, harm, S.EOS],
               relevant[:3] + [other, S.EOS], relevant[:1] * 3 + [other, S.EOS]]
  tokens, mask = joined(task, prompt, responses)
  out = task.score(tokens, mask, len(prompt))
  np.testing.assert_allclose(out["harmless"], [0, -2 * CFG.harm_weight, 0, 0], atol=1e-6)
  coverage = (out["helpful"] - (out["raw"] - task.score_mean) / task.score_std)
  np.testing.assert_allclose(coverage / CFG.relevance_weight, [0, 0, 3, 1], atol=1e-4)


def test_lengths_vary(task, train):
  n = np.concatenate([lengths(train, "chosen"), lengths(train, "rejected")])
  assert n.min() >= 1 and n.max() <= CFG.max_response_len
  assert n.std() > 2 and len(np.unique(n)) > 10
  # Version 2: a quarter to two fifths of base samples lie past the length turn.
  assert 0.2 < np.mean(n > task.length_threshold) < 0.45
  assert isinstance(task.policy, Transformer)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_turns_lie_inside_the_base_distribution(seed):
  """The measured argmax of E[gold | feature] sits at the 60th-75th percentile of each
  feature, and gold is clearly lower one value past it and beyond (what a proxy trained
  on these samples could see)."""
  cfg = dataclasses.replace(SMALL, seed=seed)
  task = S.build_task(cfg)
  assert set(task.turns) == set(S.FEATURES)
  data = S.make_split(cfg, "eval")
  for side in ("chosen", "rejected"):
    feats = task.features(data[f"{side}_tokens"], data[f"{side}_mask"], data["prompt_len"])
    gold = task.score(data[f"{side}_tokens"], data[f"{side}_mask"], data["prompt_len"])["total"]
    for name, turn in task.turns.items():
      assert 0.60 <= turn["percentile"] <= 0.75, (name, turn)
      f = feats[name]
      assert np.mean(f > turn["argmax"]) > 0.15  # the fall is in the data
      at, past = gold[f == turn["argmax"]].mean(), gold[f >= turn["argmax"] + 2].mean()
      assert past < at - 0.5, (name, at, past)


def test_markers_are_their_own_class(task):
  """M is disjoint from H, frequent in base samples, and not rewarded as relevance."""
  assert len(task.marker_ids) == CFG.num_markers
  assert not set(task.marker_ids) & set(task.harmful_ids)
  prompt = [S.BOS] + [int(np.flatnonzero(task.relevant_to == m)[0]) for m in task.marker_ids[:3]]
  tokens, mask = joined(task, prompt, [list(task.marker_ids[:3]) + [S.EOS]])
  out = task.score(tokens, mask, len(prompt))
  coverage = out["helpful"] - (out["raw"] - task.score_mean) / task.score_std
  np.testing.assert_allclose(coverage, 0.0, atol=1e-4)  # markers earn no relevance
  assert task.features(tokens, mask, len(prompt))["markers"][0] == 3


def test_place_turns_against_a_hand_case():
  """Gold = length term only: the measured argmax is the threshold, and the chosen
  threshold is the value whose mid-percentile is nearest the target."""
  # Every (length, markers) pair once: E[gold | one feature] is that feature's term plus a
  # constant. Uniform on 1..10, a length v has mid-percentile (v - .5) / 10.
  length, markers = (a.ravel() for a in np.meshgrid(np.arange(1, 11), np.arange(0, 5)))
  cfg = S.SyntheticConfig(turn_percentile=0.675)
  tau_n, tau_c = S.place_turns(cfg, np.zeros(len(length)), length, markers)
  assert tau_n == 7  # (7 - .5) / 10 = 0.65 is nearest 0.675 (8: 0.75)
  assert tau_c == 3  # markers uniform on 0..4: mid-percentiles .1 .3 .5 .7 .9
  assert S.mid_percentile(np.array([1, 2, 2, 3]), 2) == pytest.approx(0.5)
  assert S.conditional_argmax(np.array([1, 1, 2, 2, 3]), np.array([0., 1, 3, 3, 9]), 2) == 2


def test_version_1_keeps_its_tail_turn_and_no_markers():
  v1 = dataclasses.replace(SMALL, version=1)
  task = S.build_task(v1)
  assert task.turns["length"]["percentile"] > 0.85  # the turn in the tail (issue #15)
  assert set(task.turns) == {"length"} and len(task.marker_ids) == 0
  data = S.make_split(v1, "eval")
  out = task.score(data[schema.CHOSEN_TOKENS], data[schema.CHOSEN_MASK], data["prompt_len"])
  np.testing.assert_array_equal(out["markers"], 0.0)
  assert task.length_threshold == int(np.quantile(task.base_lengths, 0.9, method="higher"))
  with pytest.raises(ValueError, match="label_by"):
    S.SyntheticConfig(version=1, label_by="markers")
  assert S.from_fields({"seed": 3}).version == 1  # a run stored before version 2
  assert S.from_fields({"version": 2}).version == 2


def test_layout_right_padded_and_consistent(train):
  n, seq = train[schema.CHOSEN_TOKENS].shape
  assert seq == CFG.seq_len
  plen = train["prompt_len"]
  assert plen.dtype == np.int32 and plen.min() >= CFG.min_prompt_len
  assert plen.max() <= CFG.max_prompt_len
  for side in ("chosen", "rejected"):
    tokens, mask = train[f"{side}_tokens"], train[f"{side}_mask"]
    assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == mask.shape
    assert np.all(mask[:, :-1] >= mask[:, 1:])  # right-padded: real tokens form a prefix
    np.testing.assert_array_equal(tokens == S.PAD, ~mask)  # pad exactly where masked
    assert np.all(tokens[:, 0] == S.BOS) and not np.any(tokens[:, 1:] == S.BOS)
    last = mask.sum(1) - 1
    eos = tokens == S.EOS
    assert np.all(eos.sum(1) <= 1) and np.all(eos.any(1) <= eos[np.arange(n), last])
    assert np.mean(eos.any(1)) > 0.95
    before = np.arange(seq)[None] < plen[:, None]
    assert np.all(mask[before.nonzero()]) and np.all(lengths(train, side) >= 1)
  same_prompt = np.where(np.arange(seq)[None] < plen[:, None],
                         train[schema.CHOSEN_TOKENS] == train[schema.REJECTED_TOKENS], True)
  assert same_prompt.all()
  np.testing.assert_array_equal(train[schema.MARGIN], np.zeros(n, np.float32))
  np.testing.assert_array_equal(train[schema.WEIGHT], np.ones(n, np.float32))
  for key in (schema.MARGIN, schema.WEIGHT, schema.GOLD_CHOSEN, schema.GOLD_REJECTED):
    assert train[key].dtype == np.float32 and train[key].shape == (n,)
  assert train[schema.FLIPPED].dtype == bool


def test_preference_pairs(train):
  pairs = S.make_pairs(CFG, "train", arrays=train)
  assert len(pairs) == CFG.num_train_pairs
  for i in (0, 7, 1999):
    pair, p = pairs[i], int(train["prompt_len"][i])
    assert isinstance(pair, schema.PreferencePair) and pair.source == f"synthetic:train:{i}"
    assert pair.prompt == train[schema.CHOSEN_TOKENS][i][:p].tolist()
    rejected = train[schema.REJECTED_TOKENS][i][train[schema.REJECTED_MASK][i]].tolist()
    assert list(pair.prompt) + list(pair.rejected) == rejected
    assert pair.gold_chosen == pytest.approx(float(train[schema.GOLD_CHOSEN][i]))
    assert pair.flipped is False and pair.margin == 0.0 and pair.weight == 1.0
  small = S.make_pairs(SMALL, "eval")
  assert len(small) == SMALL.num_eval_pairs


def test_config_errors():
  with pytest.raises(ValueError, match="label_noise"):
    S.SyntheticConfig(label_noise=1.5)
  with pytest.raises(ValueError, match="version"):
    S.SyntheticConfig(version=3)
  for bad in ("helpfulness", "harmless+harmless", "total+length"):
    with pytest.raises(ValueError, match="label_by"):
      S.SyntheticConfig(label_by=bad)
  with pytest.raises(ValueError, match="split"):
    S.make_split(SMALL, "test")
  with pytest.raises(ValueError, match="num_train_pairs"):
    S.make_split(dataclasses.replace(SMALL, num_train_pairs=0), "train")
