"""Backbone pretraining end to end: it learns, its folder is the trained model, train-rm
starts from it, the seed decides the weights, and a finished workdir is not retrained."""

import functools
import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
from flax import nnx

from rmjax import parallel
from rmjax.configs import train_rm
from rmjax.lm import step as lm_step
from rmjax.lm import trainer
from rmjax.models import hf_io
from rmjax.models.config import ModelConfig
from rmjax.models.transformer import Transformer
from rmjax.rm import build as rm_build
from rmjax.rm import load as rm_load
from rmjax.rm import trainer as rm_trainer

# vocab 64: the synthetic task's vocabulary, so that train-rm can start from the model.
CFG = ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=64)
STEPS = 40


def pattern_rows(n: int, seq: int, seed: int):
  """Rows of 3, 4, 5, 3, 4, 5, ... from a random phase, right-padded (ids 0) after a
  random length in [8, seq]: every token after the first is determined by the one before."""
  rng = np.random.default_rng(seed)
  tokens = 3 + (rng.integers(0, 3, n)[:, None] + np.arange(seq)[None]) % 3
  mask = np.arange(seq)[None] < rng.integers(8, seq + 1, n)[:, None]
  return np.where(mask, tokens, 0).astype(np.int32), mask


TRAIN = pattern_rows(48, 16, seed=0)
HELD_OUT = pattern_rows(32, 16, seed=1)


def run(workdir, seed=0, **overrides):
  options = dict(workdir=workdir, seed=seed, steps=STEPS, batch_size=16, learning_rate=1e-2,
                 warmup_steps=5, weight_decay=0.01, log_every=10, save_every=20)
  return trainer.pretrain(*TRAIN, CFG, **{**options, **overrides})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pretrain")
  return workdir, run(workdir)


def tensors(folder):
  return safetensors.numpy.load_file(str(folder / "model.safetensors"))


def checkpoint_model(workdir) -> Transformer:
  """The trained model as the run's last checkpoint holds it (not the HF folder)."""
  path = workdir / "checkpoints" / str(STEPS) / "state"
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  params = checkpointer.restore(path, target)["params"]
  graphdef, abstract = nnx.split(nnx.eval_shape(
      lambda: Transformer(trainer.lm_config(CFG), rngs=nnx.Rngs(0))))
  stored = []
  for path_, leaf in nnx.to_flat_state(abstract):
    node = params
    for key in path_:
      node = node[str(key)]
    stored.append((path_, leaf.replace(node["value"])))
  return nnx.merge(graphdef, nnx.from_flat_state(stored))


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, tokens, mask):
  return lm_step.model_logits(nnx.merge(graphdef, params), tokens, mask)


def logits(model, tokens, mask):
  """float32 [B, S, V], jitted (one compile for models of one structure)."""
  return _logits(*nnx.split(model), tokens, mask)


def test_learns_the_pattern(pretrained):
  """Every prediction but a row's first is certain: the held-out loss falls far below the
  log(vocab) of an untrained (near uniform) model."""
  _, hf = pretrained
  assert trainer.evaluate_loss(hf, *HELD_OUT) < 0.15 * np.log(CFG.vocab_size)
  summary = trainer.read_summary(hf)
  assert summary["final_train_loss"] < 0.15 * np.log(CFG.vocab_size)
  assert summary["config"]["seed"] == 0 and summary["config"]["train"]["steps"] == STEPS


def test_folder_is_the_trained_model(pretrained):
  workdir, hf = pretrained
  trained, loaded = checkpoint_model(workdir), hf_io.load_hf(hf)
  tokens, mask = HELD_OUT
  np.testing.assert_allclose(logits(loaded, tokens, mask), logits(trained, tokens, mask),
                             rtol=1e-5, atol=1e-5)


def rm_config(hf, workdir):
  config = train_rm.get_config()  # preset sizes (d_model 64, ...) that init_from replaces
  config.model.init_from = str(hf)
  config.data.synthetic.update(num_train_pairs=32, num_eval_pairs=16, reference_samples=128)
  config.optim.warmup_steps = 50  # two steps at most 4e-5: the weights barely move
  config.train.update(steps=2, batch_size=8, log_every=1, eval_every=2, save_every=2,
                      workdir=str(workdir))
  return config


def test_rm_build_starts_from_the_backbone(pretrained, tmp_path):
  _, hf = pretrained
  mesh = parallel.make_mesh(parallel.MeshConfig())
  program = rm_build.build(rm_config(hf, tmp_path), vocab_size=64, mesh=mesh)
  assert program.model_cfg.d_model == CFG.d_model and program.model_cfg.num_reward_heads == 1
  params = program.state["params"]
  ours = tensors(hf)
  np.testing.assert_array_equal(params["embed"][...], ours["model.embed_tokens.weight"])
  np.testing.assert_array_equal(params["blocks"][0]["mlp"]["down"][...],
                                ours["model.layers.0.mlp.down_proj.weight"].T)


def test_train_rm_runs_from_the_folder(pretrained, tmp_path):
  _, hf = pretrained
  result = rm_trainer.train(rm_config(hf, tmp_path))
  assert 0.0 <= result["eval"]["accuracy"] <= 1.0
  model, _ = rm_load.load_trained_rm(tmp_path)
  assert model.cfg.d_model == CFG.d_model
  start = tensors(hf)["model.embed_tokens.weight"]
  moved = np.abs(np.asarray(model.embed[...]) - start).max()
  assert 0 < moved < 1e-3 < start.std() / 10  # two tiny steps away: not another init


def test_the_seed_decides_the_weights(pretrained, tmp_path):
  _, hf = pretrained
  again, other = tensors(run(tmp_path / "again", seed=0)), tensors(run(tmp_path / "other",
                                                                       seed=1))
  first = tensors(hf)
  assert set(again) == set(first)
  for name in first:
    np.testing.assert_array_equal(again[name], first[name], err_msg=name)
  assert not np.allclose(other["model.embed_tokens.weight"], first["model.embed_tokens.weight"])


def test_a_finished_workdir_is_not_trained_again(pretrained, monkeypatch):
  workdir, hf = pretrained
  rows = (workdir / "metrics.jsonl").read_text()
  weights = (hf / "model.safetensors").read_bytes()

  def no_training(**kwargs):
    raise AssertionError("loop.run was called on a finished workdir")
  monkeypatch.setattr(trainer.loop, "run", no_training)
  assert run(workdir) == hf
  assert (workdir / "metrics.jsonl").read_text() == rows
  assert (hf / "model.safetensors").read_bytes() == weights
  with pytest.raises(ValueError, match=r"seed: 0 -> 1"):
    run(workdir, seed=1)
  with pytest.raises(ValueError, match=r"train.steps: 40 -> 50"):
    run(workdir, steps=50)


def test_an_interrupted_run_resumes_to_the_same_weights(pretrained, tmp_path, monkeypatch,
                                                        capsys):
  """Stopped after the step-20 checkpoint, the rerun continues from it and ends where the
  uninterrupted run ended, with each step's metrics row written once."""
  workdir, hf = pretrained
  real = trainer.ArraySource.batch

  def failing(self, step):
    if step == 25:
      raise KeyboardInterrupt("stopped at step 25")
    return real(self, step)
  monkeypatch.setattr(trainer.ArraySource, "batch", failing)
  with pytest.raises(KeyboardInterrupt):
    run(tmp_path)
  assert not (tmp_path / "hf").exists()
  monkeypatch.setattr(trainer.ArraySource, "batch", real)
  capsys.readouterr()
  assert run(tmp_path) == tmp_path / "hf"
  assert "resumed pretraining from step 20" in capsys.readouterr().out
  for name, value in tensors(hf).items():
    np.testing.assert_array_equal(tensors(tmp_path / "hf")[name], value, err_msg=name)
  assert (tmp_path / "metrics.jsonl").read_text() == (workdir / "metrics.jsonl").read_text()


def test_a_lost_folder_is_rewritten_from_the_last_checkpoint(pretrained, tmp_path, capsys):
  """Killed between the last checkpoint and the folder's rename: the rerun resumes at the
  end, trains nothing, and writes the same folder."""
  workdir, hf = pretrained
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / "hf")
  (copy / "hf.tmp").mkdir()  # a half-written folder is replaced
  rows = (copy / "metrics.jsonl").read_text()
  capsys.readouterr()
  assert run(copy) == copy / "hf"
  assert f"resumed pretraining from step {STEPS}" in capsys.readouterr().out
  assert not (copy / "hf.tmp").exists()
  assert tensors(copy / "hf").keys() == tensors(hf).keys()
  for name, value in tensors(hf).items():
    np.testing.assert_array_equal(tensors(copy / "hf")[name], value)
  assert (copy / "metrics.jsonl").read_text() == rows
  assert trainer.read_summary(copy / "hf") == trainer.read_summary(hf)


@pytest.mark.parametrize("change, message", [
    (dict(mask=np.ones((48, 15), bool)), r"mask shape \(48, 15\) does not match tokens"),
    (dict(tokens=np.zeros((0, 16), np.int32), mask=np.zeros((0, 16), bool)), "no rows"),
    (dict(steps=0), r"steps=0 must be >= 1"),
    (dict(batch_size=3, mesh=(2, 1, 1, 1)), r"batch_size=3 is not divisible by the data-parallel "
                                            r"size 2"),
    (dict(tokens=np.full((48, 16), 64, np.int32)), r"outside the model's vocabulary \[0, 64\)"),
    (dict(mask=np.eye(16, dtype=bool)[np.arange(48) % 16]), "no two consecutive real tokens"),
])
def test_bad_input_is_one_line(change, message, tmp_path):
  tokens, mask = change.pop("tokens", TRAIN[0]), change.pop("mask", TRAIN[1])
  if "mesh" in change:  # two host devices, wherever the tests run
    change["mesh"] = parallel.make_mesh(change["mesh"], devices=jax.devices("cpu")[:2])
  options = {**dict(workdir=tmp_path, steps=STEPS, batch_size=16), **change}
  with pytest.raises(ValueError, match=message) as error:
    trainer.pretrain(tokens, mask, CFG, **options)
  assert "\n" not in str(error.value)


def test_evaluate_loss_matches_the_formula(pretrained):
  """Batched evaluation weighs every counted token alike: one batch or many, the same."""
  _, hf = pretrained
  model = hf_io.load_hf(hf)
  tokens, mask = HELD_OUT
  z = np.asarray(logits(model, tokens, mask), np.float64)[:, :-1]
  m = mask[:, 1:] & mask[:, :-1]
  logp = z - z.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  expected = nll[m].mean()
  assert trainer.evaluate_loss(model, tokens, mask, batch_size=5) == pytest.approx(
      expected, rel=1e-4)
  assert json.loads((hf / "config.json").read_text())["vocab_size"] == CFG.vocab_size
