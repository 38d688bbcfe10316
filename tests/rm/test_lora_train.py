"""LoRA training: a reward-model run trains adapters and heads only (the base stays
bit-identical, optimizer state exists for adapters and heads alone) and resumes; the LoRA
step gives the same loss on 1 and 8 devices and computes no base gradient; PPO with LoRA
actor and critic keeps both bases frozen; export-hf writes merged models that
transformers' torch classes score like ours."""

import contextlib
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from orbax.checkpoint import PyTreeCheckpointer

from rmjax import parallel
from rmjax.commands import export_hf
from rmjax.configs import export_hf as export_config
from rmjax.configs import rl as ppo_config
from rmjax.configs import train_rm
from rmjax.data import schema
from rmjax.models import config as model_config
from rmjax.models import lora
from rmjax.models.transformer import Transformer
from rmjax.rl import build as rl_build
from rmjax.rl import trainer as ppo_trainer
from rmjax.rm import build as rm_build
from rmjax.rm import load as load_rm
from rmjax.rm import trainer as rm_trainer
from rmjax.rm.step import make_train_step
from rmjax.runtime.optim import make_optimizer
from rmjax.tasks import preference as synthetic

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MODEL = dict(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, lora_rank=4)


def rm_config(workdir, steps):
  config = train_rm.get_config()
  config.data.synthetic.update(  # a small task: its policy is also the PPO test's
      num_train_pairs=128, num_eval_pairs=32, max_response_len=12, policy_d_model=32,
      policy_n_layers=1, policy_d_ff=64, gold_d_model=32, gold_n_layers=1, gold_d_ff=64)
  config.model.update(MODEL)
  config.optim.update(learning_rate=1e-2, warmup_steps=0)
  config.train.update(steps=steps, batch_size=16, log_every=1, eval_every=steps, save_every=2,
                      workdir=str(workdir))
  return config


def _restore(workdir, step):
  return PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def _flat(tree):
  """{path string: array} of a (restored or live) params tree."""
  pure = nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree
  return {"/".join(str(getattr(k, "key", k)) for k in path).removesuffix("/value"): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(pure)[0]}


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
  """The workdir of a LoRA reward-model run of 4 steps, then resumed to 6, and the output
  of its second part."""
  workdir = tmp_path_factory.mktemp("lora_rm")
  rm_trainer.train(rm_config(workdir, 4))
  with contextlib.redirect_stdout(io.StringIO()) as out:
    rm_trainer.train(rm_config(workdir, 6))
  return workdir, out.getvalue()


def test_lora_reward_model_trains_adapters_and_heads_only_and_resumes(rm_run):
  tmp_path, out = rm_run
  assert "resumed from step 4" in out
  final = _restore(tmp_path, 6)
  params = _flat(final["params"])
  vocab = params["embed"].shape[0]
  mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
  initial = _flat(nnx.state(rm_build.build_model(rm_config(tmp_path, 6).model, vocab, 0,
                                                   mesh)))
  assert initial.keys() == params.keys()
  trainable = {k for k in params if "_lora/" in k or k.startswith("reward_head")}
  assert len(trainable) == 2 * len(model_config.LORA_TARGETS) + 1
  for name, value in params.items():
    if name in trainable:
      assert not np.array_equal(value, initial[name]), f"{name} did not train"
    else:
      np.testing.assert_array_equal(value, initial[name], err_msg=f"{name} moved")
  # Adam's two moments of each adapter and head, nothing for the base.
  moments = [x for x in jax.tree.leaves(final["opt_state"]) if np.ndim(x) > 0]
  assert sorted(x.size for x in moments) == sorted(2 * [params[k].size for k in trainable])
  losses = [json.loads(line)["loss"] for line in open(tmp_path / "metrics.jsonl")
            if '"train"' in line]
  assert len(losses) == 6 and np.mean(losses[-2:]) < np.mean(losses[:2]), losses


def _pairs(rng, batch=8, seq=12, vocab=64):
  tokens = lambda: rng.integers(3, vocab, (batch, seq)).astype(np.int32)
  mask = lambda: np.arange(seq)[None] < rng.integers(seq // 2, seq + 1, (batch, 1))
  return {schema.CHOSEN_TOKENS: tokens(), schema.CHOSEN_MASK: mask(),
          schema.REJECTED_TOKENS: tokens(), schema.REJECTED_MASK: mask(),
          schema.MARGIN: np.zeros(batch, np.float32), schema.WEIGHT: np.ones(batch, np.float32)}


def test_lora_step_on_one_device_equals_the_2_2_2_mesh(eight_devices):
  cfg = model_config.tiny_llama(vocab_size=64, num_reward_heads=1, lm_head=False, **MODEL)
  config = train_rm.get_config()
  optim = config.optim.copy_and_resolve_references()
  optim.update(learning_rate=1e-2, warmup_steps=0)
  batches = [_pairs(np.random.default_rng(i)) for i in range(2)]
  results = []
  for shape, devices in (((1, 1, 1), eight_devices[:1]), ((2, 2, 2), eight_devices)):
    mesh = parallel.make_mesh(shape, devices=devices)
    graphdef, params = nnx.split(parallel.init_sharded(
        lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh))
    tx = make_optimizer(optim, 10, lora.trainable_mask(params))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    shardings = parallel.tree_shardings(state, mesh)
    step = parallel.compile_step(make_train_step(graphdef, tx, config.loss), mesh, shardings,
                                 {k: v.ndim for k, v in batches[0].items()})
    state = jax.device_put(state, shardings)
    metrics = []
    for batch in batches:
      state, out = step(state, parallel.shard_batch(batch, mesh))
      metrics.append(jax.device_get(out))
    results.append(metrics)
  for one, eight in zip(*results):
    for name in ("loss", "grad_norm"):
      np.testing.assert_allclose(one[name], eight[name], rtol=1e-5)
  assert results[0][1]["loss"] != results[0][0]["loss"]  # the second step saw trained adapters


def test_lora_step_computes_no_base_gradient():
  """The frozen base's weight gradients feed nothing, so XLA drops them: the compiled LoRA
  step does far fewer floating-point operations than the full one."""
  config = train_rm.get_config()
  batch = _pairs(np.random.default_rng(0), seq=16)
  flops = {}
  for rank in (0, 4):
    cfg = model_config.tiny_llama(vocab_size=64, num_reward_heads=1, lm_head=False,
                                  **{**MODEL, "d_model": 64, "d_ff": 256, "lora_rank": rank})
    graphdef, params = nnx.split(nnx.eval_shape(lambda cfg=cfg: Transformer(cfg, rngs=nnx.Rngs(0))))
    tx = make_optimizer(config.optim, 10, lora.trainable_mask(params))
    state = {"params": params, "opt_state": jax.eval_shape(tx.init, params),
             "step": jax.ShapeDtypeStruct((), jnp.int32)}
    compiled = jax.jit(make_train_step(graphdef, tx, config.loss)).lower(state, batch).compile()
    analysis = compiled.cost_analysis()
    flops[rank] = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
  assert flops[4] < 0.8 * flops[0], flops


def test_ppo_with_lora_actor_and_critic_keeps_both_bases_frozen(rm_run, tmp_path):
  """Against the LoRA reward model: the critic starts from it (its adapters merged, fresh
  ones added), the actor from the task's policy; export-hf writes the actor merged."""
  rm_dir, _ = rm_run
  config = ppo_config.get_config()
  config.reward.workdirs = (str(rm_dir),)
  config.critic.update(lora_rank=4)
  config.actor.update(lora_rank=4, lora_targets="qkv,down")
  config.rl.update(iterations=2, prompts=4, samples_per_prompt=2, max_new_tokens=6)
  config.optim.actor.learning_rate = 1e-2
  config.train.update(workdir=str(tmp_path / "ppo"), save_every=2)
  ppo_trainer.train(config)
  final = _restore(tmp_path / "ppo", 2)
  task = synthetic.build_task(synthetic.SyntheticConfig(**rm_config(rm_dir, 6).data.synthetic))
  reward_model, _ = load_rm.load_trained_rm(rm_dir)
  starts = {"actor": _flat(nnx.state(task.policy)),
            "critic": _flat(nnx.state(lora.merged(reward_model)))}
  for name, targets, model in (("actor", 2, task.policy), ("critic", 4, reward_model)):
    params = _flat(final[name])
    adapters = [k for k in params if "_lora/" in k]
    assert len(adapters) == 2 * targets * model.cfg.n_layers
    assert all(np.abs(params[k]).max() > 0 for k in adapters if k.endswith("/b")), name
    for key, value in starts[name].items():
      if key != "reward_head":
        np.testing.assert_array_equal(params[key], value, err_msg=f"{name} {key} moved")
  assert not np.allclose(_flat(final["critic"])["value_head"],
                         starts["critic"]["reward_head"][:, 0])  # the value head trains
  # The actor exported as a causal LM, adapters merged: transformers' logits match ours.
  tokens, mask = _batch()
  actor = rl_build.trained_policy(tmp_path / "ppo")
  assert actor.cfg.lora_rank == 4
  _export(tmp_path / "ppo", tmp_path / "actor", kind="policy")
  theirs = _hf_logits(transformers.LlamaForCausalLM, tmp_path / "actor", tokens, mask)
  logits = nnx.jit(lambda model, t, m: model.logits(model(t, m)[0]))
  ours = np.asarray(logits(actor, jnp.asarray(tokens), jnp.asarray(mask)))
  np.testing.assert_allclose(theirs[mask], ours[mask], atol=1e-4)


def _hf_logits(cls, folder, tokens, mask):
  model = cls.from_pretrained(folder, dtype=torch.float32).eval()
  with torch.no_grad():
    return model(torch.tensor(tokens),
                 attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()


def _batch():
  """Right-padded synthetic-vocabulary tokens int32 [3, 10] and mask; no real pads."""
  rng = np.random.default_rng(0)
  mask = np.arange(10)[None] < np.array([10, 7, 3])[:, None]
  tokens = np.where(mask, rng.integers(1, 64, mask.shape), synthetic.PAD).astype(np.int32)
  return tokens, mask


def _export(workdir, out, **fields):
  config = export_config.get_config()
  config.update(workdir=str(workdir), out=str(out), **fields)
  return export_hf.run(config)


def test_lora_reward_model_exports_merged(rm_run, tmp_path):
  rm_dir, _ = rm_run
  _export(rm_dir, tmp_path / "rm")
  tokens, mask = _batch()
  theirs = _hf_logits(transformers.LlamaForSequenceClassification, tmp_path / "rm", tokens,
                      mask)
  scorer, _ = load_rm.load_ensemble(rm_dir)
  assert scorer.cfg.lora_rank == 4
  ours = np.asarray(scorer(jnp.asarray(tokens), jnp.asarray(mask)))
  np.testing.assert_allclose(theirs, ours, atol=1e-4)
