"""Contrastive auxiliary losses as trainer options: the hooks against the objectives'
math on separately computed states, goal positions, config errors, and short
``train-rm`` runs of every kind (single model, ensembles, packed batches, swav reload)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from orbax.checkpoint import PyTreeCheckpointer

from rmjax import parallel
from rmjax.configs import train_rm
from rmjax.data import schema, shared_prompt
from rmjax.models import config as C
from rmjax.models.transformer import Transformer
from rmjax.objectives import contrastive
from rmjax.rm import build as rm_build
from rmjax.rm import contrastive_terms
from rmjax.rm import step as rm_step
from rmjax.rm import trainer as rm_trainer
from rmjax.rm.load import load_ensemble, load_trained_rm
from rmjax.runtime.checkpoint import Checkpointer, provenance

PROMPT_LEN = np.array([2, 3, 1, 4])
CHOSEN_LEN = np.array([5, 4, 1, 3])  # response tokens; the third pair's has just one
REJECTED_LEN = np.array([3, 6, 2, 1])
SEQ = 12


def section(**fields):
  c = train_rm.get_config().loss.contrastive
  c.update(fields)
  return c


def plain_batch(seed=0):
  """Four right-padded pairs [4, SEQ] with "prompt_len"; each prompt shared by its pair."""
  rng = np.random.default_rng(seed)
  batch = {}
  for side, lengths in (("chosen", CHOSEN_LEN), ("rejected", REJECTED_LEN)):
    total = PROMPT_LEN + lengths
    batch[f"{side}_tokens"] = rng.integers(1, 100, (4, SEQ)).astype(np.int32)
    batch[f"{side}_mask"] = np.arange(SEQ)[None] < total[:, None]
  batch[schema.REJECTED_TOKENS][:, :4] = batch[schema.CHOSEN_TOKENS][:, :4]
  batch.update({schema.MARGIN: np.zeros(4, np.float32), schema.WEIGHT: np.ones(4, np.float32),
                "prompt_len": PROMPT_LEN.astype(np.int32)})
  return batch


def model(**fields):
  cfg = C.tiny_llama(d_model=32, d_ff=64, num_reward_heads=1, lm_head=False, **fields)
  return Transformer(cfg, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------- hooks vs the math


@pytest.mark.parametrize("view", ["difference", "pair"])
def test_simcse_without_dropout_is_info_nce_of_identical_views(view):
  m, batch = model(), plain_batch()
  h_c, h_r = rm_step.pair_hidden(m, batch)
  aux = contrastive_terms.make_aux_loss(section(kind="simcse", view=view, beta=2.0))
  loss, metrics = aux(m, {}, batch, jax.random.key(1), h_c, h_r)
  items = contrastive_terms.VIEWS[view](h_c, h_r)
  expected = contrastive.info_nce(items, items, 0.05)
  np.testing.assert_allclose(metrics["contrastive_loss"], expected, rtol=1e-5)
  np.testing.assert_allclose(loss, 2.0 * expected, rtol=1e-5)


def test_simcse_second_view_uses_dropout():
  m, batch = model(dropout_rate=0.3), plain_batch()
  h_c, h_r = rm_step.pair_hidden(m, batch, jax.random.key(0))
  aux = contrastive_terms.make_aux_loss(section(kind="simcse"))
  loss, _ = aux(m, {}, batch, jax.random.key(1), h_c, h_r)
  items = contrastive.difference_views(h_c, h_r)
  assert np.isfinite(loss)
  assert not np.isclose(loss, contrastive.info_nce(items, items, 0.05))


def test_swav_scores_are_cosines_with_the_prototypes():
  rng = np.random.default_rng(0)
  items, protos = rng.normal(size=(6, 8)), rng.normal(size=(8, 5))
  expected = ((items / np.linalg.norm(items, axis=1, keepdims=True))
              @ (protos / np.linalg.norm(protos, axis=0, keepdims=True)))
  np.testing.assert_allclose(contrastive_terms.prototype_scores(items, protos), expected,
                               rtol=1e-5, atol=1e-6)


def prototypes(k=5, seeds=(0,), stacked=False):
  return contrastive_terms.init_prototypes(list(seeds), 32, k, jnp.float32, stacked)


def test_prototypes_are_the_losss_own_parameters():
  single = prototypes()
  assert single.shape == (32, 5) and single.get_metadata()["axes"] == ("embed", "prototypes")
  stacked = prototypes(seeds=(0, 7), stacked=True)
  assert stacked.shape == (2, 32, 5)
  assert stacked.get_metadata()["axes"] == ("ensemble", "embed", "prototypes")
  np.testing.assert_array_equal(stacked[...][0], single[...])  # member m: seed m's draw
  assert not np.allclose(stacked[...][1], single[...])
  assert 0.5 < float(np.std(single[...])) * np.sqrt(32) < 1.5  # std about 1 / sqrt(D)


def test_swav_hook_without_dropout_matches_numpy_scores():
  m, batch, params = model(), plain_batch(), {"prototypes": prototypes()}
  h_c, h_r = rm_step.pair_hidden(m, batch)
  aux = contrastive_terms.make_aux_loss(section(kind="swav", prototypes=5))
  loss, metrics = aux(m, params, batch, jax.random.key(1), h_c, h_r)
  items = np.asarray(contrastive.difference_views(h_c, h_r), np.float64)
  protos = np.asarray(params["prototypes"][...], np.float64)
  scores = ((items / np.linalg.norm(items, axis=1, keepdims=True))
            @ (protos / np.linalg.norm(protos, axis=0, keepdims=True)))
  expected = contrastive.swav_loss(scores, scores, 0.1, 0.05, 3)
  np.testing.assert_allclose(metrics["contrastive_loss"], expected, rtol=1e-4)
  np.testing.assert_allclose(loss, 0.5 * expected, rtol=1e-4)  # β = 0.5, difference view


def test_swav_without_prototypes_says_so():
  m, batch = model(), plain_batch()
  h_c, h_r = rm_step.pair_hidden(m, batch)
  with pytest.raises(ValueError, match="needs its prototypes among the params"):
    contrastive_terms.make_aux_loss(section(kind="swav"))(m, {}, batch, jax.random.key(0), h_c,
                                                          h_r)


def test_loss_fn_adds_the_weighted_term_and_its_gradient_reaches_the_prototypes():
  m, batch = model(), plain_batch()
  graphdef, state = nnx.split(m)
  params = {rm_step.MODEL: state, "prototypes": prototypes()}
  loss_cfg, key = train_rm.get_config().loss, jax.random.key(2)
  aux = contrastive_terms.make_aux_loss(section(kind="swav", prototypes=5))
  bt_only, _ = rm_step.make_loss_fn(graphdef, loss_cfg)(params, batch, key)
  grad_fn = jax.jit(jax.value_and_grad(rm_step.make_loss_fn(graphdef, loss_cfg, aux),
                                       has_aux=True))
  (total, out), grads = grad_fn(params, batch, key)
  np.testing.assert_allclose(total, bt_only + 0.5 * out["metrics"]["contrastive_loss"],
                             rtol=1e-5)
  assert np.abs(np.asarray(grads["prototypes"][...])).max() > 0


# ---------------------------------------------------------------- goal positions and reads


def _chosen_response(batch):
  """bool [B, SEQ]: the chosen response's tokens in the chosen row, and its last index."""
  pos = np.arange(SEQ)[None]
  start, stop = PROMPT_LEN[:, None], (PROMPT_LEN + CHOSEN_LEN)[:, None]
  return (pos >= start) & (pos < stop), stop[:, 0] - 1


def test_goal_positions_lie_inside_the_chosen_response_before_its_end():
  batch, packed = plain_batch(), shared_prompt.pack(plain_batch(), 20)
  inside, last = _chosen_response(batch)
  seen = set()
  for seed in range(40):
    key = jax.random.key(seed)
    index = np.asarray(contrastive_terms.goal_source_index(batch, key))
    packed_index = np.asarray(contrastive_terms.goal_source_index(packed, key))
    for i in range(4):
      assert inside[i, index[i]], (i, index[i])
      assert packed["packed_segments"][i, packed_index[i]] == shared_prompt.CHOSEN
      assert packed_index[i] == index[i]  # the chosen segment starts after the prompt
      seen.add((i, int(index[i])))
    assert index[2] == last[2]  # a one-token response: its only (and last) token
    assert all(index[i] < last[i] for i in (0, 1, 3))
  # every position before the last is drawn
  assert {p for i, p in seen if i == 0} == set(range(2, 6))


def test_goal_positions_with_left_padding():
  batch = plain_batch()
  shift = SEQ - (PROMPT_LEN + CHOSEN_LEN)
  for key in (schema.CHOSEN_TOKENS, schema.CHOSEN_MASK):
    batch[key] = np.stack([np.roll(row, s) for row, s in zip(batch[key], shift)])
  inside, _ = _chosen_response(plain_batch())
  for seed in range(10):
    index = np.asarray(contrastive_terms.goal_source_index(batch, jax.random.key(seed)))
    assert all(inside[i, index[i] - shift[i]] for i in range(4))


@pytest.mark.parametrize("packed", [False, True])
def test_extra_read_is_the_full_forward_state_and_leaves_the_others(packed):
  m = model()
  batch = shared_prompt.pack(plain_batch(), 20) if packed else plain_batch()
  index = contrastive_terms.goal_source_index(batch, jax.random.key(3))
  h_c, h_r, h_x = rm_step.pair_hidden(m, batch, chosen_extra=index)
  base_c, base_r = rm_step.pair_hidden(m, batch)
  np.testing.assert_allclose(h_c, base_c, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h_r, base_r, rtol=1e-5, atol=1e-6)
  if packed:
    segments = batch["packed_segments"]
    full, _ = m(batch["packed_tokens"], segments != shared_prompt.PAD_SEGMENT,
                positions=batch["packed_positions"],
                attn_mask=shared_prompt.attention_mask(segments))
  else:
    full, _ = m(batch[schema.CHOSEN_TOKENS], batch[schema.CHOSEN_MASK])
  np.testing.assert_allclose(h_x, full[np.arange(4), index], rtol=1e-5, atol=1e-5)


def test_goal_hook_is_the_goal_conditioned_loss_at_the_drawn_state():
  m, batch = model(), plain_batch()
  h_c, h_r = rm_step.pair_hidden(m, batch)
  key = jax.random.key(5)
  loss, metrics = contrastive_terms.make_aux_loss(section(kind="goal"))(m, {}, batch, key, h_c,
                                                                        h_r)
  index = contrastive_terms.goal_source_index(batch, jax.random.split(key)[0])
  full, _ = m(batch[schema.CHOSEN_TOKENS], batch[schema.CHOSEN_MASK])
  h_s = full[np.arange(4), index]
  expected = contrastive.goal_conditioned_loss(h_s, h_c, h_s, h_r)
  np.testing.assert_allclose(metrics["contrastive_loss"], expected, rtol=1e-5)
  np.testing.assert_allclose(loss, 0.5 * expected, rtol=1e-5)


# ---------------------------------------------------------------- config


def test_defaults_and_model_fields():
  assert contrastive_terms.make_aux_loss(section()) is None
  assert contrastive_terms.make_aux_loss(None) is None
  assert contrastive_terms.model_fields(None) == {}  # a run config without the section
  simcse = contrastive_terms.resolve(section(kind="simcse"))
  assert (simcse.beta, simcse.temperature) == (1.0, 0.05)
  swav = contrastive_terms.resolve(section(kind="swav", view="pair"))
  assert (swav.beta, swav.temperature, swav.prototypes) == (0.1, 0.1, 50)
  assert contrastive_terms.resolve(section(kind="goal")).beta == 0.5
  assert contrastive_terms.resolve(section(kind="swav", beta=0.0)).beta == 0.0
  assert contrastive_terms.model_fields(section(kind="swav")) == {"dropout_rate": 0.05}
  assert contrastive_terms.prototype_count(contrastive_terms.resolve(section(kind="swav"))) == 20
  assert contrastive_terms.prototype_count(simcse) == 0
  assert contrastive_terms.model_fields(section(kind="simcse")) == {"dropout_rate": 0.05}
  assert contrastive_terms.model_fields(section(kind="goal")) == {}


@pytest.mark.parametrize("fields, message", [
    (dict(kind="infonce"), "kind='infonce'"),
    (dict(view="both"), "view='both'"),
    (dict(beta=-0.5), "beta=-0.5"),
    (dict(temperature=0.0), "temperature=0.0"),
    (dict(dropout=1.0), "dropout=1.0"),
    (dict(prototypes=0), "prototypes=0"),
    (dict(sinkhorn_epsilon=0.0), "sinkhorn_epsilon=0.0"),
    (dict(sinkhorn_iterations=0), "sinkhorn_iterations=0"),
])
def test_bad_options_name_the_field(fields, message):
  with pytest.raises(ValueError, match=f"loss.contrastive: .*{message}"):
    contrastive_terms.make_aux_loss(section(**fields))


def test_unknown_field_is_named():
  with pytest.raises(ValueError, match="unknown fields \\['tau'\\]"):
    contrastive_terms.resolve({"kind": "simcse", "tau": 0.1})



# ---------------------------------------------------------------- train-rm runs


def run_config(workdir, kind, steps=2, **fields):
  config = train_rm.get_config()
  config.data.synthetic.update(num_train_pairs=64, num_eval_pairs=32)
  config.model.update(d_model=32, d_ff=64, n_layers=1)
  config.optim.warmup_steps = 1
  config.train.update(steps=steps, batch_size=16, log_every=1, eval_every=steps,
                      save_every=steps, workdir=str(workdir))
  config.loss.contrastive.update(kind=kind, **fields)
  return config


def train_rows(workdir):
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return [r for r in rows if r.get("split") == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("kind, shared", [("simcse", False), ("goal", True)])
def test_trainer_logs_the_contrastive_loss(tmp_path, kind, shared):
  config = run_config(tmp_path, kind)
  config.train.shared_prompt = shared
  rm_trainer.train(config)
  rows = train_rows(tmp_path)
  assert len(rows) == 2
  assert all(np.isfinite(r["loss"]) and np.isfinite(r["contrastive_loss"]) for r in rows)
  assert all(r["contrastive_loss"] > 0 for r in rows)


def stored_params(workdir, step):
  """The params of a checkpoint step as written (nothing dropped): nested dicts."""
  return PyTreeCheckpointer().restore(str(workdir / "checkpoints" / str(step) / "state"))[
      "params"]


@pytest.mark.slow
def test_swav_run_trains_its_prototypes_and_its_checkpoint_loads(tmp_path):
  config = run_config(tmp_path, "swav", prototypes=6)
  rm_trainer.train(config)
  assert all(np.isfinite(r["contrastive_loss"]) for r in train_rows(tmp_path))
  stored = stored_params(tmp_path, 2)
  assert set(stored) == {"model", "prototypes"}  # the loss's parameters beside the model's
  trained = stored["prototypes"]["value"]
  assert trained.shape == (32, 6)
  assert not np.allclose(trained, prototypes(6)[...])  # trained from their initial draw
  loaded, run = load_trained_rm(tmp_path)  # the scorer: the model alone
  assert run.loss.contrastive.kind == "swav"
  assert loaded.cfg.dropout_rate == 0.05
  assert "prototypes" not in nnx.to_pure_dict(nnx.state(loaded))
  np.testing.assert_array_equal(loaded.embed[...], stored["model"]["embed"]["value"])


def test_a_checkpoint_with_prototypes_inside_the_model_still_loads(tmp_path):
  """Runs written before the prototypes left the model kept them in its state."""
  config = run_config(tmp_path, "swav", prototypes=6)
  mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
  model = rm_build.build_model(config.model, 64, 0, mesh)
  state = nnx.state(model)
  state["prototypes"] = prototypes(6)
  with Checkpointer(tmp_path / "checkpoints", keep=1, interval=1,
                    provenance=provenance(config, "hash")) as checkpointer:
    checkpointer.save(3, {"params": state, "step": jnp.asarray(3, jnp.int32)}, {}, force=True)
    checkpointer.wait()
  loaded, _ = load_trained_rm(tmp_path)
  batch = plain_batch()
  for a, b in zip(rm_step.pair_rewards(loaded, batch), rm_step.pair_rewards(model, batch)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind, shared_backbone", [("swav", False), ("simcse", True)])
def test_ensembles_train_with_a_contrastive_loss(tmp_path, kind, shared_backbone):
  config = run_config(tmp_path, kind)
  config.ensemble.update(k=2, shared_backbone=shared_backbone)
  rm_trainer.train(config)
  rows = train_rows(tmp_path)
  assert all(np.isfinite(r["contrastive_loss"]) for r in rows)
  if not shared_backbone:
    assert all(np.isfinite(r["contrastive_loss/1"]) for r in rows)
  scorer, _ = load_ensemble(tmp_path)
  assert scorer.k == 2
  if kind == "swav":  # one set of prototypes per member, in the checkpoint only
    assert stored_params(tmp_path, 2)["prototypes"]["value"].shape == (2, 32, 20)
    assert "prototypes" not in nnx.to_pure_dict(scorer.params)
