"""``rmjax rl`` with ``reward.objective=brme`` on a reward model with Gaussian heads: the
score of an iteration is BRME of the member-normalised means with, per episode, the
nominal head of lowest normalised std (recomputed here from the episodes)."""

import json

import numpy as np
import pytest

from rmjax.configs import rl as rl_config
from rmjax.configs import train_rm
from rmjax.parallel.sharding import to_host
from rmjax.rl import rewards as rl_rewards
from rmjax.rl import trainer as rl_trainer
from rmjax.rl.best_of_n import right_padded
from rmjax.rm import trainer as rm_trainer

LAM = 0.4


def gaussian_rm(workdir):
  config = train_rm.get_config()
  config.ensemble.update(k=3, shared_backbone=True, gaussian=True)
  config.data.synthetic.update(num_train_pairs=64, num_eval_pairs=16)
  config.model.update(d_model=32, d_ff=64, n_layers=1)
  config.train.update(steps=2, batch_size=16, log_every=2, eval_every=2, save_every=2,
                      workdir=str(workdir))
  rm_trainer.train(config)
  return workdir


def test_rl_brme_reads_the_gaussian_reward_models_stds(tmp_path):
  c = rl_config.get_config()
  c.reward.update(workdirs=(str(gaussian_rm(tmp_path / "rm")),), objective="brme",
                  brme_lam=LAM, normalize=False, clip=0.0, norm_batches=1)
  c.rl.update(iterations=1, prompts=4, samples_per_prompt=2, max_new_tokens=4)
  c.train.update(workdir=str(tmp_path / "rl"), log_every=1, save_every=1)
  rl_trainer.train(c)
  (row,) = [json.loads(line) for line in open(tmp_path / "rl" / "metrics.jsonl")]

  trainer, _ = rl_trainer.build_run(c)
  state = trainer.init_state()  # measures the member statistics as iteration 0 did
  episodes, metrics, _ = trainer.rollout(state, 0)
  assert metrics["score"] == pytest.approx(row["score"], rel=1e-6)
  tokens, mask = to_host(right_padded(episodes["tokens"], episodes["mask"]))
  means, stds = (np.asarray(x) for x in trainer.sources[0].with_stds(tokens, mask))
  (stats,) = trainer.member_stats_of(state)
  z = (means - stats["mu"]) / stats["sigma"]
  nominal = z[np.arange(len(z)), (stds / stats["sigma"]).argmin(axis=1)]
  expected = LAM * nominal + (1 - LAM) * z.min(axis=1)
  assert row["score"] == pytest.approx(float(expected.mean()), rel=1e-5, abs=1e-6)
  without = LAM * z.mean(axis=1) + (1 - LAM) * z.min(axis=1)  # BRME of scalar heads
  assert abs(float(without.mean()) - row["score"]) > 1e-4
  members, member_stds = rl_rewards.member_scores_and_stds(trainer.sources, tokens, mask)
  np.testing.assert_allclose(member_stds[0], stds, rtol=1e-6)
  np.testing.assert_allclose(members[0], means, rtol=1e-6)
