"""MetaRM's member update (η = 0, the exact gradient against finite differences, the
first-order shortcut), its meta-set loader and sampler, and train-rm with it enabled."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from test_trainer import tiny_config

from rmjax.configs import train_rm
from rmjax.data import schema
from rmjax.models.config import ModelConfig
from rmjax.models.transformer import Transformer, sequence_rewards
from rmjax.objectives.preference_strength import metarm_difference_loss
from rmjax.rm import metarm
from rmjax.rm import step as rm_step
from rmjax.rm import trainer as rm_trainer
from rmjax.tasks import preference as synthetic

LOSS_CFG = ml_collections.ConfigDict(dict(label_smoothing=0.0, center_coef=0.0,
                                          score_reg_coef=0.0, use_margin=False))
VOCAB, T = 16, 8


def tiny_model():
  """(graphdef, params) of a one-block Transformer reward model (float32)."""
  cfg = ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                    max_seq_len=T, lm_head=False, num_reward_heads=1, init_std=0.3)
  return nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))


class PooledRewardModel(nnx.Module):
  """A small stand-in with the Transformer's reward interface, float64 for the
  finite-difference checks (the Transformer computes norms and heads in float32) and
  quick to compile: the hidden state
  at t is tanh(W · mean of the embeddings of tokens <= t); reward = hidden · w."""

  def __init__(self, seed=0, dim=6, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    draw = lambda *shape: nnx.Param(jnp.asarray(rng.standard_normal(shape), dtype))
    self.embed, self.mix, self.reward_head = draw(VOCAB, dim), draw(dim, dim), draw(dim, 1)

  def __call__(self, tokens, mask, *, read_at, dropout_key=None, **_):
    """tokens, mask [B, T]; read_at [B, R] -> (hidden [B, R, dim], None)."""
    x = self.embed[...][tokens] * mask[..., None]
    counts = jnp.maximum(jnp.cumsum(mask, axis=1), 1)[..., None]
    hidden = jnp.tanh((jnp.cumsum(x, axis=1) / counts) @ self.mix[...])
    return jnp.take_along_axis(hidden, read_at[..., None], axis=1), None

  def reward_scores(self, hidden):
    """hidden [..., dim] -> rewards [..., 1]."""
    return hidden @ self.reward_head[...]


def right_padded(rng, shape):
  """Random tokens [..., T] int32 and a right-padded mask (2..T real tokens)."""
  lengths = rng.integers(2, T + 1, shape[:-1])
  mask = np.arange(T) < lengths[..., None]
  return np.where(mask, rng.integers(1, VOCAB, shape), 0).astype(np.int32), mask


def make_batch(seed=0, pairs=4, prompts=2, k=3):
  rng = np.random.default_rng(seed)
  chosen, chosen_mask = right_padded(rng, (pairs, T))
  rejected, rejected_mask = right_padded(rng, (pairs, T))
  meta_tokens, meta_mask = right_padded(rng, (prompts, k, T))
  return {schema.CHOSEN_TOKENS: chosen, schema.CHOSEN_MASK: chosen_mask,
          schema.REJECTED_TOKENS: rejected, schema.REJECTED_MASK: rejected_mask,
          schema.MARGIN: np.zeros(pairs, np.float32), schema.WEIGHT: np.ones(pairs, np.float32),
          metarm.META_TOKENS: meta_tokens, metarm.META_MASK: meta_mask}


def one_update(update, params, tx, batch):
  new, _, metrics = jax.jit(update)(params, tx.init(params), batch, jax.random.key(3))
  return new, metrics


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("model", [
    "pooled", pytest.param("transformer", marks=pytest.mark.slow)])  # compiles for ~20 s
def test_eta_zero_is_a_plain_bt_step_for_both_variants(model):
  graphdef, params = tiny_model() if model == "transformer" else nnx.split(
      PooledRewardModel(dtype=jnp.float32))
  tx, batch = optax.adamw(1e-2), make_batch()
  loss_fn = rm_step.make_loss_fn(graphdef, LOSS_CFG)
  plain, plain_metrics = one_update(rm_step.make_member_update(tx, loss_fn), params, tx, batch)
  for first_order in (False, True):
    update = metarm.make_meta_update(graphdef, tx, loss_fn, 0.0, first_order)
    meta, metrics = one_update(update, params, tx, batch)
    for a, b in zip(leaves(plain), leaves(meta)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(metrics["loss"], plain_metrics["loss"], rtol=1e-6)
    assert 1 / 3 <= float(metrics["meta_difference"]) < 2 / 3  # k = 3: (k − 1)/k · [½, 1)
    assert float(metrics["meta_grad_norm"]) > 0


def composed_loss(graphdef, params, batch, eta):
  """L_BT(θ + η ∇J(θ)), written here from the pieces (sequence_rewards, the BT and
  difference losses), independently of metarm's update."""
  loss_fn = rm_step.make_loss_fn(graphdef, LOSS_CFG)
  pairs = {k: v for k, v in batch.items() if k not in metarm.META_KEYS}

  def meta_loss(p):
    tokens, mask = batch[metarm.META_TOKENS], batch[metarm.META_MASK]
    rewards = sequence_rewards(nnx.merge(graphdef, p), tokens.reshape(-1, T),
                               mask.reshape(-1, T))
    return metarm_difference_loss(rewards[:, 0].reshape(tokens.shape[:2]))

  shifted = jax.tree.map(lambda p, g: p + eta * g, params, jax.grad(meta_loss)(params))
  return loss_fn(shifted, pairs, jax.random.key(3))[0]


def applied_gradient(graphdef, params, batch, eta, first_order):
  """The gradient the update applies: with SGD at rate 1, θ − θ_new."""
  tx = optax.sgd(1.0)
  update = metarm.make_meta_update(graphdef, tx, rm_step.make_loss_fn(graphdef, LOSS_CFG),
                                   eta, first_order)
  new, _ = one_update(update, params, tx, batch)
  return jax.tree.map(lambda a, b: a - b, params, new)


def test_exact_gradient_matches_finite_differences_of_the_composed_map():
  eta, eps = 0.5, 1e-5
  with jax.enable_x64(True):
    graphdef, params = nnx.split(PooledRewardModel())
    batch = make_batch(seed=1)
    grads = applied_gradient(graphdef, params, batch, eta, first_order=False)
    along = jax.jit(lambda s, v: composed_loss(
        graphdef, jax.tree.map(lambda p, d: p + s * d, params, v), batch, eta))
    rng = np.random.default_rng(0)
    for _ in range(3):  # random directions v: <∇f, v> vs (f(θ + εv) − f(θ − εv)) / 2ε
      v = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), params)
      numeric = (float(along(eps, v)) - float(along(-eps, v))) / (2 * eps)
      analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grads),
                                                           jax.tree.leaves(v)))
      np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def gradient_at_shifted_point(graphdef, params, batch, eta):
  """∇L_BT at θ' = θ + η ∇J(θ)."""
  objective = metarm.make_meta_objective(graphdef)
  meta_grads = jax.grad(objective)(params, batch[metarm.META_TOKENS], batch[metarm.META_MASK])
  shifted = jax.tree.map(lambda p, g: p + eta * g, params, meta_grads)
  pairs = {k: v for k, v in batch.items() if k not in metarm.META_KEYS}
  loss_fn = rm_step.make_loss_fn(graphdef, LOSS_CFG)
  return jax.grad(lambda p: loss_fn(p, pairs, jax.random.key(3))[0])(shifted)


def test_first_order_is_the_gradient_at_the_shifted_point_and_differs_from_exact():
  eta = 0.5
  with jax.enable_x64(True):
    graphdef, params = nnx.split(PooledRewardModel())
    batch = make_batch(seed=2)
    first = applied_gradient(graphdef, params, batch, eta, first_order=True)
    exact = applied_gradient(graphdef, params, batch, eta, first_order=False)
    at_shifted = jax.jit(gradient_at_shifted_point, static_argnums=0)(graphdef, params, batch,
                                                                      eta)
  for a, b in zip(leaves(first), leaves(at_shifted)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
  gap = max(np.abs(a - b).max() for a, b in zip(leaves(first), leaves(exact)))
  assert gap > 1e-4


def test_negative_eta_is_refused():
  graphdef, _ = nnx.split(PooledRewardModel(dtype=jnp.float32))
  with pytest.raises(ValueError, match="eta=-0.1 must be >= 0"):
    metarm.make_meta_update(graphdef, optax.sgd(1.0), None, -0.1)


def write_npz(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def test_loader_reads_a_good_meta_set_and_names_file_and_field_of_a_bad_one(tmp_path):
  tokens, mask = right_padded(np.random.default_rng(0), (5, 3, T))
  meta = metarm.load_meta_set(write_npz(tmp_path / "ok.npz", tokens=tokens, mask=mask), 3,
                              VOCAB)
  assert meta.tokens.shape == (5, 3, T) and meta.tokens.dtype == np.int32
  cases = {
      "missing": (dict(tokens=tokens), r"missing field\(s\) \['mask'\]"),
      "k": (dict(tokens=tokens[:, :2], mask=mask[:, :2]), r"'tokens' has shape \(5, 2, 8\)"),
      "dtype": (dict(tokens=tokens, mask=mask.astype(np.float32)), "'mask' has dtype float32"),
      "vocab": (dict(tokens=tokens + VOCAB, mask=mask), "'tokens' has ids in .*outside"),
      "empty": (dict(tokens=tokens, mask=np.zeros_like(mask)), "rows without a real token"),
      "left": (dict(tokens=tokens, mask=mask[..., ::-1]), "not right-padded")}
  for name, (arrays, message) in cases.items():
    path = write_npz(tmp_path / f"{name}.npz", **arrays)
    with pytest.raises(ValueError, match=f"{path}: .*{message}"):
      metarm.load_meta_set(path, 3, VOCAB)


def metarm_config(**fields):
  cfg = dict(enabled=True, eta=0.1, first_order=False, k=4, prompts_per_step=8,
             num_prompts=64, policy="synthetic", responses="", temperature=1.0, top_k=0)
  return ml_collections.ConfigDict({**cfg, **fields})


def test_config_errors_are_clear():
  with pytest.raises(ValueError, match="eta=-1 must be >= 0.*k=1 must be >= 2"):
    metarm.check_config(metarm_config(eta=-1, k=1), "synthetic", 1)
  with pytest.raises(ValueError, match="prompts_per_step=6 must be a positive multiple of "
                                       "the data-parallel size 4"):
    metarm.check_config(metarm_config(prompts_per_step=6), "synthetic", 4)
  with pytest.raises(ValueError, match="needs data.source='synthetic', not 'files'"):
    metarm.check_config(metarm_config(), "files", 1)
  metarm.check_config(metarm_config(responses="x.npz"), "files", 1)


def test_synthetic_meta_set_samples_k_responses_to_the_training_prompts():
  scfg = synthetic.SyntheticConfig(num_train_pairs=64, num_eval_pairs=8)
  split = synthetic.make_split(scfg, "train")
  meta = metarm.synthetic_meta_set(metarm_config(num_prompts=5, k=3), scfg, seed=0)
  assert meta.tokens.shape == (5, 3, scfg.seq_len) and meta.mask.dtype == bool
  assert not (meta.mask[..., 1:] & ~meta.mask[..., :-1]).any()  # right-padded
  for i, plen in enumerate(split["prompt_len"][:5]):
    prompt = split[schema.CHOSEN_TOKENS][i, :plen]
    assert (meta.tokens[i, :, :plen] == prompt).all()
    assert (meta.mask[i].sum(1) > plen).all()  # every response has a token
  assert len({meta.tokens[i, j].tobytes() for i in range(5) for j in range(3)}) > 5


def test_default_meta_set_is_shifted_off_the_base_policy():
  """train-rm's default meta set holds responses of an optimised (best-of-n under gold)
  policy, not of the base policy that made the pairs: their gold reward is higher by a
  clear margin on the same prompts, and they are drawn fresh for each prompt."""
  defaults = train_rm.get_config().metarm
  assert defaults.policy == "synthetic_best_of_n" and defaults.best_of >= 2
  scfg = synthetic.SyntheticConfig(num_train_pairs=64, num_eval_pairs=8)
  mcfg = ml_collections.ConfigDict({**defaults.to_dict(), "num_prompts": 32, "k": 2})
  metarm.check_config(mcfg, "synthetic", 1)
  meta = metarm.synthetic_meta_set(mcfg, scfg, seed=0)
  assert meta.tokens.shape == (32, 2, scfg.seq_len)
  assert not (meta.mask[..., 1:] & ~meta.mask[..., :-1]).any()  # right-padded
  prompts, plen = metarm.synthetic_train_prompts(scfg, 32)
  for i, n in enumerate(plen):
    assert (meta.tokens[i, :, :n] == prompts[i, :n]).all()
  task = synthetic.build_task(scfg)
  lengths = np.repeat(plen, 2)
  base_tokens, base_mask = task.sample_responses(jax.random.key(5), np.repeat(prompts, 2, 0),
                                                 lengths)
  base = task.score(base_tokens, base_mask, lengths)["total"]
  shifted = task.score(meta.tokens.reshape(64, -1), meta.mask.reshape(64, -1), lengths)["total"]
  assert shifted.mean() - base.mean() > 0.5 * base.std(), (shifted.mean(), base.mean())
  assert len({meta.tokens[i, j].tobytes() for i in range(32) for j in range(2)}) == 64


def test_best_of_n_needs_n_of_at_least_two():
  with pytest.raises(ValueError, match="best_of=1 must be >= 2"):
    metarm.check_config(metarm_config(policy="synthetic_best_of_n", best_of=1), "synthetic", 1)


def test_meta_batches_are_a_pure_function_of_the_step_per_member():
  tokens, mask = right_padded(np.random.default_rng(0), (6, 2, T))
  source = type("Source", (), {"batch": lambda self, step: {"x": np.full(4, step)}})()
  meta = metarm.MetaSet(tokens, mask)
  stacked = metarm.MetaBatches(source, meta, 2, seeds=[0, 1], stacked=True)
  first = stacked.batch(5)
  assert first[metarm.META_TOKENS].shape == (2, 2, 2, T) and (first["x"] == 5).all()
  again = metarm.MetaBatches(source, meta, 2, seeds=[0, 1], stacked=True).batch(5)
  for key in metarm.META_KEYS:
    np.testing.assert_array_equal(first[key], again[key])
  single = metarm.MetaBatches(source, meta, 2, seeds=[0], stacked=False).batch(5)
  assert single[metarm.META_TOKENS].shape == (2, 2, T)


def read_train_metrics(workdir):
  """{step: metrics} of the train rows of a run's metrics.jsonl (a later row wins)."""
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  return {row["step"]: row for row in rows if row["split"] == "train"}


def metarm_run_config(workdir, steps):
  config = tiny_config(workdir, steps=steps)
  config.data.synthetic.update(num_train_pairs=128, num_eval_pairs=32)
  config.model.update(d_model=32, n_layers=1, d_ff=64)
  config.train.update(batch_size=8, log_every=1, eval_every=steps, save_every=2)
  config.metarm.update(enabled=True, k=2, prompts_per_step=8, num_prompts=16)
  return config


@pytest.mark.slow
def test_train_rm_with_metarm_runs_resumes_exactly_and_logs_the_difference(tmp_path):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  rm_trainer.train(metarm_run_config(straight, steps=4))
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoints" / "4")  # resume from step 2, replay steps 3 and 4
  rm_trainer.train(metarm_run_config(resumed, steps=4))
  a, b = read_train_metrics(straight), read_train_metrics(resumed)
  for step in range(1, 5):  # k = 2: J = σ(|r_1 − r_2|) / 2 in [1/4, 1/2)
    assert 0.25 <= a[step]["meta_difference"] < 0.5 and a[step]["meta_grad_norm"] > 0
  for step in (3, 4):
    for name in ("loss", "meta_difference", "meta_grad_norm", "grad_norm"):
      np.testing.assert_allclose(b[step][name], a[step][name], rtol=1e-5)


@pytest.mark.slow
def test_train_rm_with_metarm_on_separate_members_with_shared_prompts(tmp_path):
  config = metarm_run_config(tmp_path, steps=2)
  config.ensemble.k = 2
  config.train.shared_prompt = True
  rm_trainer.train(config)
  row = read_train_metrics(tmp_path)[2]
  members = [row[f"meta_difference/{m}"] for m in range(2)]
  assert all(0.25 <= j < 0.5 for j in members) and members[0] != members[1]
  np.testing.assert_allclose(row["meta_difference"], np.mean(members), rtol=1e-6)


@pytest.mark.slow
def test_train_rm_with_metarm_and_swav_prototypes(tmp_path):
  """The lookahead merges only the model's part of params that also hold the loss's own
  parameters (SwAV's prototypes); both terms act."""
  config = metarm_run_config(tmp_path, steps=2)
  config.loss.contrastive.kind = "swav"
  rm_trainer.train(config)
  row = read_train_metrics(tmp_path)[2]
  assert 0.25 <= row["meta_difference"] < 0.5 and row["meta_grad_norm"] > 0
  assert np.isfinite(row["contrastive_loss"]) and row["contrastive_loss"] > 0
