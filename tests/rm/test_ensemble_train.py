"""Reward-model ensembles: one program = K separate runs, members differ, the ensemble
axis shards without changing the numbers, resume is exact, load/score give [B, K]."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from orbax.checkpoint import PyTreeCheckpointer

from rmjax import parallel
from rmjax.commands import score
from rmjax.configs import score as score_config
from rmjax.configs import train_rm
from rmjax.data import schema
from rmjax.rm import batches as rm_batches
from rmjax.rm import build as rm_build
from rmjax.rm import members as ensemble
from rmjax.rm import trainer as rm_trainer
from rmjax.rm.load import load_ensemble, load_trained_rm
from rmjax.rm.step import HEAD_WEIGHT, make_train_step
from rmjax.runtime import checkpoint
from rmjax.runtime.optim import make_optimizer

K = 2
STEPS = 6
SAVE_EVERY = 3


def small_config(workdir, k=1, seed=0, steps=STEPS):
  config = train_rm.get_config()
  config.seed = seed
  config.ensemble.k = k
  config.data.synthetic.update(num_train_pairs=128, num_eval_pairs=64)
  config.model.update(d_model=32, d_ff=64)
  config.optim.warmup_steps = 2
  config.train.update(steps=steps, batch_size=16, log_every=2, eval_every=steps,
                      save_every=SAVE_EVERY, workdir=str(workdir))
  return config


def final_params(workdir, step=STEPS):
  return PyTreeCheckpointer().restore(str(workdir / "checkpoints" / str(step) / "state"))["params"]


def train_losses(workdir):
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return [r for r in rows if r.get("split") == "train"]


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
  """A K-member ensemble trained in one program, and its eval metrics."""
  workdir = tmp_path_factory.mktemp("ensemble")
  result = rm_trainer.train(small_config(workdir, k=K))
  return workdir, result["eval"]


def test_ensemble_matches_separate_single_runs(ensemble_run, tmp_path):
  workdir, metrics = ensemble_run
  stacked = final_params(workdir)
  ens_rows = train_losses(workdir)
  for m, seed in enumerate(ensemble.member_seeds(0, K)):
    single = tmp_path / f"single{m}"
    rm_trainer.train(small_config(single, seed=seed))
    for path, x in jax.tree_util.tree_leaves_with_path(final_params(single)):
      y = stacked
      for key in path:
        y = y[key.key]
      np.testing.assert_allclose(y[m], x, rtol=2e-4, atol=2e-6,
                                 err_msg=f"member {m} {jax.tree_util.keystr(path)}")
    single_rows = train_losses(single)
    np.testing.assert_allclose([r[f"loss/{m}"] for r in ens_rows],
                               [r["loss"] for r in single_rows], rtol=1e-4)
    eval_single = json.loads(
        [line for line in open(single / "metrics.jsonl") if '"eval"' in line][-1])
    np.testing.assert_allclose(metrics[f"accuracy/{m}"], eval_single["accuracy"], atol=1e-6)
    np.testing.assert_allclose(metrics[f"gold_agreement/{m}"], eval_single["gold_agreement"],
                               atol=1e-6)


def test_ensemble_eval_reports_members_and_their_mean(ensemble_run):
  _, metrics = ensemble_run
  for name in ("accuracy", "gold_agreement", "margin"):
    values = [metrics[f"{name}/{m}"] for m in range(K)]
    assert len(set(values)) > 1, (name, values)  # members really differ
  np.testing.assert_allclose(metrics["member_accuracy"],
                             np.mean([metrics[f"accuracy/{m}"] for m in range(K)]))
  assert "accuracy" in metrics and "gold_agreement" in metrics


def test_members_start_different_and_read_their_own_data_order():
  config = small_config("/unused", k=K)
  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  layout = ensemble.Layout(k=K)
  _, params = rm_build.build_members(config.model, 64, 0, mesh, layout)
  heads = np.asarray(params["reward_head"][...])  # [K, embed, 1]
  assert heads.shape[0] == K
  for a in range(K):
    for b in range(a + 1, K):
      assert not np.allclose(heads[a], heads[b])
  # Member 0 is the single model of the run's seed, to the bit.
  single = rm_build.build_model(config.model, 64, 0, mesh)
  np.testing.assert_array_equal(heads[0], single.reward_head[...])
  np.testing.assert_array_equal(params["embed"][...][0], single.embed[...])
  data = rm_batches.load(config.data, 16, 0, layout)
  batch = data.train.batch(0)
  assert batch[schema.CHOSEN_TOKENS].shape[:2] == (K, 16)
  rows = [tuple(map(tuple, batch[schema.CHOSEN_TOKENS][m])) for m in range(K)]
  assert len(set(rows)) == K
  np.testing.assert_array_equal(batch[schema.CHOSEN_TOKENS][0],
                                rm_batches.load(config.data, 16, 0).train.batch(0)[
                                    schema.CHOSEN_TOKENS])
  again = data.train.batch(0)  # a pure function of the step: resumable
  np.testing.assert_array_equal(again[schema.CHOSEN_TOKENS], batch[schema.CHOSEN_TOKENS])


def _run_steps(mesh, layout, config, steps=2):
  graphdef, params = rm_build.build_members(config.model, 64, 0, mesh, layout)
  tx = make_optimizer(config.optim, steps)
  opt_init = jax.vmap(tx.init)
  state = {"params": params, "opt_state": jax.jit(opt_init)(params),
           "step": jnp.zeros((), jnp.int32)}
  shardings = parallel.tree_shardings(state, mesh)
  state = jax.device_put(state, shardings)
  data = rm_batches.load(config.data, 16, 0, layout)
  ndims = {k: v.ndim for k, v in data.train.batch(0).items()}
  step_fn = parallel.compile_step(make_train_step(graphdef, tx, config.loss, layout), mesh,
                                  shardings, ndims, members=True)
  losses = []
  for step in range(steps):
    state, metrics = step_fn(state, parallel.shard_batch(data.train.batch(step), mesh,
                                                         members=True))
    losses.append([float(metrics[f"loss/{m}"]) for m in range(layout.k)])
  return state, np.asarray(losses)


def test_sharded_ensemble_axis_gives_the_same_numbers(eight_devices):
  config = small_config("/unused", k=4)
  layout = ensemble.Layout(k=4)
  one = parallel.make_mesh((1, 1, 1, 1), devices=eight_devices[:1])
  sharded = parallel.make_mesh(parallel.MeshConfig(data=2, ensemble=4))
  state_1, losses_1 = _run_steps(one, layout, config)
  state_8, losses_8 = _run_steps(sharded, layout, config)
  embed = state_8["params"]["embed"]
  assert embed.sharding.spec[0] == "ensemble"  # members really are spread
  assert {s.data.shape[0] for s in embed.addressable_shards} == {1}
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state_1["params"]), jax.tree.leaves(state_8["params"])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


class _Crash(Exception):
  pass


def test_ensemble_resume_is_exact(ensemble_run, tmp_path, monkeypatch, capsys):
  """Stop right after the step-3 checkpoint, resume: the same members as straight through."""
  straight, crashed = ensemble_run[0], tmp_path / "crashed"
  config = small_config(crashed, k=K)
  real_save = checkpoint.Checkpointer.save

  def save(self, step, *args, **kwargs):
    saved = real_save(self, step, *args, **kwargs)
    if saved and step == SAVE_EVERY:
      self.wait()
      raise _Crash()
    return saved

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
  with pytest.raises(_Crash):
    rm_trainer.train(config)
  monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)
  rm_trainer.train(config)
  assert f"resumed from step {SAVE_EVERY}" in capsys.readouterr().out
  for a, b in zip(jax.tree.leaves(final_params(straight)), jax.tree.leaves(final_params(crashed))):
    np.testing.assert_array_equal(a, b)
  assert train_losses(crashed)[-1] == train_losses(straight)[-1]


def test_load_and_score_an_ensemble(ensemble_run, tmp_path):
  workdir, _ = ensemble_run
  scorer, run_config = load_ensemble(workdir)
  assert scorer.k == K and scorer.layout.stacked and run_config.ensemble.k == K
  with pytest.raises(ValueError, match="load_ensemble"):
    load_trained_rm(workdir)
  data = rm_batches.load(small_config(workdir).data, 16, 0)
  tokens, mask = data.eval[schema.CHOSEN_TOKENS][:8], data.eval[schema.CHOSEN_MASK][:8]
  rewards = np.asarray(scorer(tokens, mask))
  assert rewards.shape == (8, K)
  for m in range(K):  # member m alone, as a plain Transformer
    member = nnx.merge(scorer.graphdef, jax.tree.map(lambda x, m=m: x[m], scorer.params))
    expected = member.rewards(member(tokens, mask)[0], mask)[:, 0]
    np.testing.assert_allclose(rewards[:, m], expected, rtol=1e-5, atol=1e-6)
  rows = [{"prompt": [1, 5, 7], "response": [9, 10, 11]},
          {"prompt": [1, 4], "chosen": [8, 9], "rejected": [12], "id": "x"}]
  path = tmp_path / "in.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = score_config.get_config()
  config.update(workdir=str(workdir), input=str(path), output=str(tmp_path / "out.jsonl"))
  out = score.run(config)["rows"]
  assert len(out[0]["member_rewards"]) == K and out[1]["id"] == "x"
  np.testing.assert_allclose(out[0]["reward"], np.mean(out[0]["member_rewards"]), rtol=1e-6)
  for side in ("chosen", "rejected"):
    np.testing.assert_allclose(out[1][f"reward_{side}"],
                               np.mean(out[1][f"member_rewards_{side}"]), rtol=1e-6)


def test_shared_backbone_heads_get_bootstrap_weights(tmp_path):
  config = small_config(tmp_path, k=K, steps=2)
  config.ensemble.shared_backbone = True
  layout = ensemble.Layout(k=K, shared_backbone=True)
  data = rm_batches.load(config.data, 16, 0, layout)
  weights = data.train.batch(1)[HEAD_WEIGHT]
  assert weights.shape == (16, K) and not np.all(weights == weights[:, :1])
  np.testing.assert_array_equal(data.train.batch(1)[HEAD_WEIGHT], weights)
  metrics = rm_trainer.train(config)["eval"]
  assert len({metrics[f"accuracy/{m}"] for m in range(K)} | {metrics["accuracy"]}) > 1
  scorer, _ = load_ensemble(tmp_path)
  assert not scorer.layout.stacked and scorer.cfg.num_reward_heads == K
  tokens, mask = data.eval[schema.CHOSEN_TOKENS][:4], data.eval[schema.CHOSEN_MASK][:4]
  assert scorer(tokens, mask).shape == (4, K)


@pytest.mark.parametrize("k, mesh, shared, message", [
    (0, {}, False, "ensemble.k=0"),
    (3, dict(data=4, ensemble=2), False, "not divisible by mesh.ensemble=2"),
    (2, dict(data=4, ensemble=2), True, "mesh.ensemble=2"),
])
def test_bad_ensemble_settings_say_what_is_wrong(tmp_path, k, mesh, shared, message):
  config = small_config(tmp_path, k=k)
  config.ensemble.shared_backbone = shared
  config.mesh.update(mesh)
  with pytest.raises(ValueError, match=message):
    rm_trainer.train(config)


def test_members_one_after_another_equal_members_vmapped():
  x = jnp.arange(12.0).reshape(3, 4)
  w = jnp.linspace(-1.0, 1.0, 3 * 4 * 2).reshape(3, 4, 2)
  fn = lambda xm, wm: (jnp.tanh(xm @ wm), jnp.sum(wm))
  mapped = ensemble.over_members(fn, ensemble.Layout(k=3, vectorize="map"))(x, w)
  batched = ensemble.over_members(fn, ensemble.Layout(k=3, vectorize="vmap"))(x, w)
  for a, b in zip(mapped, batched):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  assert mapped[0].shape == (3, 2) and mapped[1].shape == (3,)
  with pytest.raises(ValueError, match="ensemble.vectorize='bad'"):
    ensemble.Layout(k=3, vectorize="bad")
