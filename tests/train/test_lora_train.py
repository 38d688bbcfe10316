"""LoRA training: a reward-model run trains adapters and heads only (the base stays
bit-identical, optimizer state exists for adapters and heads alone) and resumes; the LoRA
step gives the same loss on 1 and 8 devices; PPO with LoRA actor and critic keeps both
bases frozen."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from orbax.checkpoint import PyTreeCheckpointer

from rmjax import parallel
from rmjax.configs import ppo as ppo_config
from rmjax.configs import train_rm
from rmjax.data import schema, synthetic
from rmjax.models import config as model_config
from rmjax.models import lora
from rmjax.models.transformer import Transformer
from rmjax.train import ppo_trainer, rm_trainer
from rmjax.train.optim import make_optimizer
from rmjax.train.rm_step import make_train_step

MODEL = dict(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, lora_rank=4)


def rm_config(workdir, steps):
  config = train_rm.get_config()
  config.data.synthetic.update(num_train_pairs=128, num_eval_pairs=32)
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


def test_lora_reward_model_trains_adapters_and_heads_only_and_resumes(tmp_path, capsys):
  rm_trainer.train(rm_config(tmp_path, 4))
  rm_trainer.train(rm_config(tmp_path, 6))
  assert "resumed from step 4" in capsys.readouterr().out
  final = _restore(tmp_path, 6)
  params = _flat(final["params"])
  vocab = params["embed"].shape[0]
  mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
  initial = _flat(nnx.state(rm_trainer.build_model(rm_config(tmp_path, 6).model, vocab, 0,
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


def low_ids(tokens, mask):
  """A known reward: how many tokens have ids 3..19."""
  hit = (tokens >= synthetic.FIRST_CONTENT) & (tokens < 20) & mask
  return jnp.sum(hit, axis=1, keepdims=True).astype(jnp.float32)


def test_ppo_with_lora_actor_and_critic_keeps_both_bases_frozen(tmp_path):
  config = ppo_config.get_config()
  config.critic.update(init="policy", lora_rank=4)
  config.actor.update(lora_rank=4, lora_targets="qkv,down")
  config.ppo.update(iterations=2, prompts=4, samples_per_prompt=2, max_new_tokens=6)
  config.optim.actor.learning_rate = 1e-2
  config.train.update(workdir=str(tmp_path), save_every=2)
  task = synthetic.build_task(synthetic.SyntheticConfig(policy_n_layers=1))
  ppo_trainer.train(config, scorers=[jax.jit(low_ids)], task=task, critic_model=task.policy)
  final = _restore(tmp_path, 2)
  policy = _flat(nnx.state(task.policy))
  for name in ("actor", "critic"):
    params = _flat(final[name])
    adapters = [k for k in params if "_lora/" in k]
    assert len(adapters) == 2 * (2 if name == "actor" else 4)
    assert all(np.abs(params[k]).max() > 0 for k in adapters if k.endswith("/b"))
    for key, value in policy.items():
      np.testing.assert_array_equal(params[key], value, err_msg=f"{name} {key} moved")
  assert np.abs(_flat(final["critic"])["value_head"]).max() > 0  # the value head trains
