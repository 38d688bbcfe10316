"""The confidence synthetic responses state, its restatement (PPO-M's pairs) and the
labellers' confidence bias."""

import numpy as np
import pytest

from rmjax.data import schema
from rmjax.rm import reward_source
from rmjax.tasks import confidence
from rmjax.tasks import preference as synthetic


def test_stated_confidence_reads_the_last_content_token():
  eos, pad = synthetic.EOS, synthetic.PAD
  tokens = np.array([[2, 9, 13, 5, eos, pad],   # last content 5 -> level 2
                     [2, 9, 13, 24, 14, eos],   # 14 -> level 0
                     [2, 9, 13, 7, 8, 24],      # cut at the cap: 24 -> level 10
                     [2, 9, 13, eos, pad, pad]])  # EOS alone: states nothing
  mask = tokens != pad
  got = synthetic.stated_confidence(tokens, mask, np.array([3, 3, 3, 3]))
  np.testing.assert_allclose(got, [0.2, 0.0, 1.0, 0.5])


def test_restate_and_level_token():
  assert confidence.level_token(10, 64) == 13
  assert confidence.level_token(10, 64, avoid=[13, 24]) == 35
  with pytest.raises(ValueError, match="level 11"):
    confidence.level_token(11, 64)
  tokens = np.array([[2, 9, 5, 1, 0], [2, 9, 1, 0, 0]])
  out, has = confidence.restate(tokens, tokens != 0, 2, 13)
  np.testing.assert_array_equal(out, [[2, 9, 13, 1, 0], [2, 9, 1, 0, 0]])
  np.testing.assert_array_equal(has, [True, False])


def test_calibration_pairs_prefer_high_confidence_only_on_the_chosen_side():
  cfg = synthetic.SyntheticConfig(num_train_pairs=16, num_eval_pairs=8)
  task = synthetic.build_task(cfg)
  split = synthetic.make_split(cfg, "train")
  extra = confidence.calibration_pairs(task, split, 16)
  state = lambda side: synthetic.stated_confidence(
      extra[f"{side}_tokens"], extra[f"{side}_mask"], extra["prompt_len"])
  n = len(extra[schema.WEIGHT])
  stating = lambda side: split[f"{side}_mask"].sum(1) - split["prompt_len"] > 1
  first = int(np.sum(stating("chosen")))
  assert n == first + int(np.sum(stating("rejected"))) and 8 <= first <= 16
  # chosen-side rows come first: 10/10 beats 0/10; then the rejected side: 0/10 beats 10/10
  np.testing.assert_array_equal(state("chosen")[:first], 1.0)
  np.testing.assert_array_equal(state("rejected")[:first], 0.0)
  np.testing.assert_array_equal(state("chosen")[first:], 0.0)
  np.testing.assert_array_equal(state("rejected")[first:], 1.0)
  # only the last content token differs from the original response
  diff = extra[schema.CHOSEN_TOKENS][:first] != split[schema.CHOSEN_TOKENS][stating("chosen")]
  assert np.all(diff.sum(1) <= 1)


def test_confidence_bias_moves_labels_not_the_world():
  plain = synthetic.SyntheticConfig(num_train_pairs=256, num_eval_pairs=8)
  biased = synthetic.SyntheticConfig(num_train_pairs=256, num_eval_pairs=8,
                                     confidence_bias=4.0)
  assert synthetic.build_task(plain) is synthetic.build_task(biased)
  run = lambda cfg: {"data": {"source": "synthetic", "synthetic": cfg.__dict__}}
  assert reward_source.task_id(run(plain)) == reward_source.task_id(run(biased))
  a, b = synthetic.make_split(plain), synthetic.make_split(biased)
  stated = lambda s, side: synthetic.stated_confidence(
      s[f"{side}_tokens"], s[f"{side}_mask"], s["prompt_len"])
  gap = lambda s: np.mean(stated(s, "chosen") - stated(s, "rejected"))
  assert gap(b) > gap(a) + 0.1  # the biased labels choose the more confident side more often
  task = synthetic.build_task(plain)
  gold = task.score(a[schema.CHOSEN_TOKENS], a[schema.CHOSEN_MASK], a["prompt_len"])["total"]
  right = confidence.correct(gold, task.quality_threshold)
  assert 0.2 < right.mean() < 0.9  # the median of base samples splits chosen responses


def test_train_rm_data_adds_the_calibration_pairs_on_the_synthetic_task_only():
  from rmjax.configs import train_rm
  from rmjax.rm import batches

  data = train_rm.get_config().data
  data.synthetic.update(num_train_pairs=16, num_eval_pairs=8)
  plain = batches.load(data, 8, 0)
  data.calibration_pairs = True
  augmented = batches.load(data, 8, 0)
  extra = confidence.calibration_pairs(
      synthetic.build_task(synthetic.from_fields(data.synthetic.to_dict())),
      synthetic.make_split(synthetic.from_fields(data.synthetic.to_dict())), 16)
  assert augmented.num_train_pairs == 16 + len(extra[schema.WEIGHT])
  assert plain.num_train_pairs == 16 and augmented.data_hash != plain.data_hash
  data.source = "files"
  with pytest.raises(ValueError, match="data.calibration_pairs"):
    batches.load(data, 8, 0)
