"""Gaussian reward heads (``ensemble.gaussian``, BRME): a shared backbone with three
Gaussian heads learns above chance with positive, example-dependent stds; loading gives the
means as member rewards and the stds beside them; BRME's nominal is the lowest-std head;
separate members and k = 1 train, resume and load too."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from rmjax.configs import train_rm
from rmjax.data import schema
from rmjax.objectives import ensemble as objectives
from rmjax.objectives import gaussian
from rmjax.rm import batches as rm_batches
from rmjax.rm import build as rm_build
from rmjax.rm import members as ensemble
from rmjax.rm import trainer as rm_trainer
from rmjax.rm.load import load_ensemble, single_device_mesh
from rmjax.rm.reward_source import from_workdir

K = 3
STEPS = 100


def gaussian_config(workdir, k=K, shared=True, steps=STEPS):
  config = train_rm.get_config()
  config.ensemble.update(k=k, shared_backbone=shared, gaussian=True)
  # The "harmless" labels are learnt within a hundred steps of this tiny model.
  config.data.synthetic.update(num_train_pairs=512, num_eval_pairs=256, label_by="harmless")
  config.model.update(d_model=32, d_ff=64, n_layers=1)
  config.optim.warmup_steps = 2
  config.train.update(steps=steps, batch_size=32, log_every=20, eval_every=steps,
                      save_every=steps, workdir=str(workdir))
  return config


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("gaussian")
  return workdir, rm_trainer.train(gaussian_config(workdir))["eval"]


def eval_sequences(n=16):
  data = rm_batches.load(gaussian_config("/unused").data, 16, 0)
  return data.eval[schema.CHOSEN_TOKENS][:n], data.eval[schema.CHOSEN_MASK][:n]


def test_shared_backbone_gaussian_heads_learn_with_positive_varying_stds(gaussian_run):
  workdir, metrics = gaussian_run
  # 256 held-out pairs: chance 0.5 with a standard error of about 0.031.
  assert metrics["accuracy"] > 0.58, metrics
  stds = [metrics[f"mean_std/{m}"] for m in range(K)]
  assert np.all(np.isfinite(stds)) and min(stds) > gaussian.STD_FLOOR
  np.testing.assert_allclose(metrics["mean_std"], np.mean(stds), rtol=1e-5)
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  train = [r for r in rows if r.get("split") == "train"]
  assert all(np.isfinite(r["std"]) and r["std"] > 0 for r in train)


def test_loading_gives_the_means_and_the_stds_of_the_head_columns(gaussian_run):
  workdir, _ = gaussian_run
  scorer, _ = load_ensemble(workdir)
  assert scorer.has_stds and scorer.cfg.num_reward_heads == 2 * K
  tokens, mask = eval_sequences()
  means, stds = (np.asarray(x) for x in scorer.with_stds(tokens, mask))
  assert means.shape == stds.shape == (16, K)
  np.testing.assert_allclose(np.asarray(scorer(tokens, mask)), means, rtol=1e-6)
  # The model's raw head columns: K means, then K log-stds.
  model = nnx.merge(scorer.graphdef, scorer.params)
  columns = np.asarray(model.rewards(model(tokens, mask)[0], mask))
  np.testing.assert_allclose(means, columns[:, :K], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stds, gaussian.STD_FLOOR + np.exp(columns[:, K:]), rtol=1e-5)
  assert np.all(np.isfinite(stds)) and np.all(stds > 0)
  assert np.ptp(stds, axis=0).min() > 1e-4  # every head's std depends on the example
  source = from_workdir(workdir)
  assert source.has_stds and "Gaussian" in source.scale
  np.testing.assert_allclose(np.asarray(source.with_stds(tokens, mask)[1]), stds, rtol=1e-6)


def test_brme_nominal_is_the_lowest_std_head_of_each_example(gaussian_run):
  workdir, _ = gaussian_run
  scorer, _ = load_ensemble(workdir)
  means, stds = (np.asarray(x) for x in scorer.with_stds(*eval_sequences()))
  lam = 0.3
  nominal = means[np.arange(len(means)), stds.argmin(axis=1)]
  expected = lam * nominal + (1 - lam) * means.min(axis=1)
  np.testing.assert_allclose(objectives.brme(means, lam, stds=stds), expected, rtol=1e-6)
  assert len(set(stds.argmin(axis=1))) > 1 or not np.allclose(
      objectives.brme(means, lam), expected)  # the stds change the objective


@pytest.mark.parametrize("k", [1, 2])
def test_single_and_separate_gaussian_members_train_resume_and_load(tmp_path, capsys, k):
  config = gaussian_config(tmp_path, k=k, shared=False, steps=2)
  metrics = rm_trainer.train(config)["eval"]
  if k > 1:  # and resume: the checkpoint holds both columns of every member
    config.train.steps = 3
    metrics = rm_trainer.train(config)["eval"]
    assert "resumed from step 2" in capsys.readouterr().out
  assert np.isfinite(metrics["mean_std"])
  scorer, run_config = load_ensemble(tmp_path)
  assert run_config.checkpoint.step == config.train.steps
  assert scorer.cfg.num_reward_heads == 2 and scorer.layout.stacked == (k > 1)
  tokens, mask = eval_sequences(8)
  means, stds = (np.asarray(x) for x in scorer.with_stds(tokens, mask))
  assert means.shape == stds.shape == (8, k) and np.all(stds > 0)
  m = k - 1  # member m's columns are its own model's [mean, log-std]
  member = (nnx.merge(scorer.graphdef, jax.tree.map(lambda x: x[m], scorer.params)) if k > 1
            else nnx.merge(scorer.graphdef, scorer.params))
  columns = np.asarray(member.rewards(member(tokens, mask)[0], mask))
  np.testing.assert_allclose(means[:, m], columns[:, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stds[:, m], gaussian.STD_FLOOR + np.exp(columns[:, 1]), rtol=1e-5)


def test_gaussian_heads_with_metarm_are_refused():
  config = gaussian_config("/unused")
  config.metarm.enabled = True
  with pytest.raises(ValueError, match="ensemble.gaussian=True with metarm.enabled"):
    rm_build.RMSpec.from_config(config)


def test_a_scalar_model_predicts_no_std():
  config = gaussian_config("/unused", k=1)
  config.ensemble.gaussian = False
  layout = ensemble.Layout.from_config(config.ensemble)
  graphdef, params = rm_build.build_members(config.model, 64, 0, single_device_mesh(), layout)
  scorer = ensemble.RewardEnsemble(graphdef, params, layout, None)
  assert not scorer.has_stds and layout.columns == 1
  with pytest.raises(ValueError, match="predicts no std"):
    scorer.with_stds(*eval_sequences(8))


def test_score_writes_each_members_std_beside_the_means(gaussian_run, tmp_path):
  from rmjax.commands import score
  from rmjax.configs import score as score_config

  workdir, _ = gaussian_run
  tokens, mask = eval_sequences(4)
  rows = [{"response": [int(t) for t, m in zip(tok, msk) if m]} for tok, msk in zip(tokens, mask)]
  rows.append({"chosen": rows[0]["response"], "rejected": rows[1]["response"]})
  path = tmp_path / "rows.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = score_config.get_config()
  config.update(workdir=str(workdir), input=str(path), output=str(tmp_path / "out.jsonl"),
                batch_size=8)
  out = score.run(config)["rows"]
  means, stds = from_workdir(workdir).with_stds(tokens, mask)
  for row, mean, std in zip(out, np.asarray(means), np.asarray(stds)):
    np.testing.assert_allclose(row["member_rewards"], mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(row["member_stds"], std, rtol=1e-4, atol=1e-5)
  assert len(out[-1]["member_stds_chosen"]) == K and len(out[-1]["member_stds_rejected"]) == K
  np.testing.assert_allclose(out[-1]["member_stds_chosen"], out[0]["member_stds"], rtol=1e-4)
