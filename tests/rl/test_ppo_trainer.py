"""PPO end to end on the synthetic task's policy: learning a known reward, one update on a
1-device mesh against an 8-device (2, 2, 2) mesh, exact resume after SIGKILL, and the
reward-model path of ``rmjax rl``."""

import json
import os

import jax
import jax.numpy as jnp
import kill_resume
import numpy as np
import pytest
from orbax.checkpoint import PyTreeCheckpointer

from rmjax import parallel
from rmjax.configs import rl as ppo_config
from rmjax.rl import trainer as ppo_trainer
from rmjax.rl.ppo_step import language_model_loss, make_losses
from rmjax.tasks import preference as synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def low_ids(tokens, mask):
  """The known reward: how many tokens of the sequence have ids 3..19."""
  hit = (tokens >= synthetic.FIRST_CONTENT) & (tokens < 20) & mask
  return jnp.sum(hit, axis=1, keepdims=True).astype(jnp.float32)


def toy_config(workdir, iterations, algorithm="ppo"):
  c = ppo_config.get_config()
  c.critic.init = "policy"
  c.rl.update(iterations=iterations, max_new_tokens=12, algorithm=algorithm)
  c.optim.actor.learning_rate = 3e-4
  c.optim.critic.learning_rate = 1e-3
  c.kl.coef = 0.01
  c.train.update(workdir=str(workdir), log_every=5, save_every=4)
  return c


def toy_train(workdir, iterations, algorithm="ppo"):
  task = synthetic.build_task(synthetic.SyntheticConfig())
  return ppo_trainer.train(toy_config(workdir, iterations, algorithm),
                           scorers=[jax.jit(low_ids)], task=task, critic_model=task.policy)


def metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.slow
def test_ppo_raises_a_known_reward_and_keeps_kl_finite(tmp_path):
  toy_train(tmp_path, 24)
  rows = metrics(tmp_path)
  scores = [r["score"] for r in rows]
  assert np.mean(scores[-4:]) > np.mean(scores[:3]) + 3.0, scores
  assert all(np.isfinite(r["kl"]) and np.isfinite(r["value_loss"]) for r in rows)
  assert rows[-1]["kl"] > 0.5  # the policy did move away from the reference


def test_update_on_one_device_equals_the_8_device_2_2_2_mesh(eight_devices):
  task = synthetic.build_task(synthetic.SyntheticConfig())
  config = toy_config("unused", 1)
  one = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), devices=eight_devices[:1])
  trainer = ppo_trainer.RLTrainer(config, [jax.jit(low_ids)], task, task.policy, one)
  state = trainer.init_state()
  episodes, _, _ = trainer.rollout(state, 0)
  batch = {k: np.asarray(v) for k, v in next(trainer.minibatches(episodes, 0)).items()}
  params = {k: jax.device_get(state[k]) for k in ("actor", "critic")}
  losses = make_losses(trainer.actor_graphdef, trainer.critic_graphdef, trainer.prompt_width,
                       config.rl, trainer.s)
  grad_fn = jax.grad(losses, has_aux=True)
  results = []
  for mesh in (one, parallel.make_mesh(parallel.MeshConfig(2, 2, 2), devices=eight_devices)):
    sharded = parallel.shard_tree(params, mesh)
    grads, out = jax.jit(grad_fn)(sharded, parallel.shard_batch(batch, mesh))
    results.append(jax.device_get((grads, out)))
  (g1, m1), (g8, m8) = results
  for name in ("policy_loss", "value_loss", "entropy", "clip_fraction"):
    np.testing.assert_allclose(m8[name], m1[name], rtol=1e-5, atol=1e-6, err_msg=name)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])  # with a critic, and without
def test_sigkill_then_resume_continues_bit_identically(tmp_path, algorithm):
  kill_resume.check(tmp_path, "from test_ppo_trainer import toy_train\n"
                    "toy_train(sys.argv[1], 8, sys.argv[3])\n", os.path.dirname(__file__),
                    kill_at=4, final=8, resumed="resumed from iteration 4",
                    extra_args=(algorithm,))


def test_bad_settings_say_what_is_wrong(tmp_path):
  config = toy_config(tmp_path, 1)
  config.rl.minibatches = 3
  task = synthetic.build_task(synthetic.SyntheticConfig())
  with pytest.raises(ValueError, match="do not split into rl.minibatches=3"):
    ppo_trainer.train(config, scorers=[low_ids], task=task, critic_model=task.policy)
  config = toy_config(tmp_path, 1)
  config.reward.transform = "exp"
  with pytest.raises(ValueError, match="reward.transform='exp'"):
    ppo_trainer.train(config, scorers=[low_ids], task=task, critic_model=task.policy)
  config = toy_config(tmp_path, 1)
  config.reward.workdirs = (str(tmp_path / "none"),)
  with pytest.raises(FileNotFoundError, match="train one with rmjax train-rm"):
    ppo_trainer.train(config)
  config = toy_config(tmp_path, 1)
  config.rl.max_new_tokens = task.policy.cfg.max_seq_len
  with pytest.raises(ValueError, match=rf"plus rl.max_new_tokens={config.rl.max_new_tokens} "
                                       "exceed the policy's max_seq_len"):
    ppo_trainer.train(config, scorers=[low_ids], task=task, critic_model=task.policy)


def test_ptx_loss_is_the_next_token_nll_and_joins_the_update(tmp_path):
  task = synthetic.build_task(synthetic.SyntheticConfig())
  tokens = np.array([[0, 2, 5, 7, 9], [2, 4, 4, 1, 0]], np.int32)
  mask = np.array([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]], bool)
  hidden, _ = task.policy(jnp.asarray(tokens), jnp.asarray(mask))
  logits = np.asarray(task.policy.logits(hidden), np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                         keepdims=True)) \
      - logits.max(-1, keepdims=True)
  nll = [-logp[b, t, tokens[b, t + 1]] for b in range(2) for t in range(4)
         if mask[b, t] and mask[b, t + 1]]
  assert float(language_model_loss(task.policy, tokens, mask)) == pytest.approx(
      np.mean(nll), rel=1e-5)
  config = toy_config(tmp_path, 2)
  config.rl.update(ptx_coef=0.5, ptx_sequences=64)
  ppo_trainer.train(config, scorers=[jax.jit(low_ids)], task=task, critic_model=task.policy)
  rows = metrics(tmp_path)
  assert all(np.isfinite(r["ptx_loss"]) and r["ptx_loss"] > 0 for r in rows)


def test_member_statistics_are_measured_once_on_the_initial_policy_and_checkpointed(tmp_path):
  """Two members on scales 1 and 10: the run's checkpoint holds their mean and std on
  reference-policy samples (what a fresh trainer measures), and the score is normalised
  by them."""
  task = synthetic.build_task(synthetic.SyntheticConfig())
  two = jax.jit(lambda t, m: jnp.concatenate([low_ids(t, m), 10.0 * low_ids(t, m) + 3.0], -1))
  config = toy_config(tmp_path, 1)
  config.reward.update(norm_batches=2, normalize=False, clip=0.0, objective="wco")
  result = ppo_trainer.train(config, scorers=[two], task=task, critic_model=task.policy)
  (stats,) = result["member_stats"]
  (fresh,) = ppo_trainer.RLTrainer(config, [two], task, task.policy).measure_member_stats()
  np.testing.assert_allclose(stats["mu"], fresh["mu"], rtol=1e-6)
  np.testing.assert_allclose(stats["sigma"], fresh["sigma"], rtol=1e-6)
  np.testing.assert_allclose(stats["sigma"][1], 10.0 * stats["sigma"][0], rtol=1e-5)
  np.testing.assert_allclose(stats["mu"][1], 10.0 * stats["mu"][0] + 3.0, rtol=1e-5)
  saved = PyTreeCheckpointer().restore(str(tmp_path / "checkpoints" / "1" / "state"))
  np.testing.assert_array_equal(np.asarray(saved["member_stats"]["0"]["mu"]), stats["mu"])
  # Both members normalised alike: WCO's min is either one (equal after normalisation).
  score = metrics(tmp_path)[0]["score"]
  assert abs(score) < 3.0, score  # raw member 1 would put the score near 10x the count
