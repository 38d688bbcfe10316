"""The PPO loop (``rmjax ppo``): sample, score, advantages, then compiled minibatch updates.

Per iteration i (``shared/papers/algorithms.md`` §5):
  1. prompts of the synthetic task drawn from key fold_in(seed, i), each sampled
     ``samples_per_prompt`` times with the #2 sampler; its log-probs are the old log-probs;
  2. reference log-probs, critic values, reward-model scores through the score pipeline
     (``ppo_rewards``) and, for the log, the gold reward;
  3. per-token rewards (−β·KL at every token, the score at the last), GAE, whitening;
  4. ``epochs`` passes over ``minibatches`` shuffled minibatches, each one jitted update
     (``ppo_step.make_update``), and the KL controller's update.
Everything that decides iteration i is a function of (config, checkpointed state, i): the
state holds actor, critic, both optimizer states, the KL controller and the running reward
moments, and every key is derived from (seed, i), so a run killed at any point resumes
from its last checkpoint and continues bit for bit.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rmjax import parallel
from rmjax.data.array_source import ArraySource
from rmjax.models import lora
from rmjax.models.sampler import SamplingConfig, generate
from rmjax.models.transformer import Transformer
from rmjax.objectives import kl as kl_lib
from rmjax.objectives import ppo, running_stats
from rmjax.parallel.sharding import to_host
from rmjax.rl import rewards as ppo_rewards
from rmjax.rl.best_of_n import right_padded
from rmjax.rl.build import CRITIC_INITS, critic_from, first_member, load_reward_models, task_of
from rmjax.rl.ppo_step import EPISODE_KEYS, make_update, response_logprobs, response_values
from rmjax.runtime.checkpoint import Checkpointer, abstract_like, provenance
from rmjax.runtime.loop import check_finite
from rmjax.runtime.metrics import MetricsWriter, Progress
from rmjax.runtime.optim import make_optimizer
from rmjax.tasks import preference as synthetic


class PPOTrainer:
  """Holds the models, the compiled functions and the score pipeline of one run."""

  def __init__(self, config, scorers, task, critic_model: Transformer, mesh=None):
    c = self.c = config.ppo
    self.config, self.scorers, self.task = config, scorers, task
    self.mesh = mesh or parallel.make_mesh(parallel.MeshConfig(**config.mesh))
    self.score_cfg = ppo_rewards.ScoreConfig.from_config(config.reward)
    self.episodes = c.prompts * c.samples_per_prompt
    if self.episodes % c.minibatches:
      raise ValueError(f"ppo.prompts x samples_per_prompt = {self.episodes} episodes do not "
                       f"split into ppo.minibatches={c.minibatches}")
    self.sampling = SamplingConfig(
        max_new_tokens=c.max_new_tokens or task.cfg.max_response_len,
        temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, eos_id=synthetic.EOS,
        pad_id=synthetic.PAD)
    self.prompt_width = task.cfg.max_prompt_len
    self.actor_graphdef, reference = nnx.split(
        lora.adapt_from_config(task.policy, config.get("actor"), config.seed))
    self.reference = parallel.shard_tree(reference, self.mesh)
    self.critic_graphdef, critic = critic_from(
        lora.adapt_from_config(critic_model, config.get("critic"), config.seed), self.mesh)
    updates = c.iterations * c.epochs * c.minibatches
    self.actor_tx = make_optimizer(config.optim.actor, updates, lora.trainable_mask(reference))
    self.critic_tx = make_optimizer(config.optim.critic, updates, lora.trainable_mask(critic))
    actor = jax.tree.map(jnp.copy, self.reference)  # its own buffers: the update donates them
    self.state = {"actor": actor, "critic": critic,
                  "actor_opt": self.actor_tx.init(actor),
                  "critic_opt": self.critic_tx.init(critic), "step": jnp.zeros((), jnp.int32),
                  "kl": (kl_lib.adaptive_kl_controller(config.kl.coef, config.kl.target,
                                                       config.kl.horizon)
                         if config.kl.adaptive else kl_lib.fixed_kl_controller(config.kl.coef)),
                  "moments": running_stats.init_moments()}
    self.shardings = parallel.tree_shardings(self.state, self.mesh)
    self.state = jax.device_put(self.state, self.shardings)
    self._forward = jax.jit(parallel.sharding.on_mesh(self._rollout_forward, self.mesh))
    self.ptx = self._ptx_source() if c.ptx_coef else None

  def _ptx_source(self):
    """PPO-ptx's corpus: ``ptx_sequences`` reference-policy samples, drawn once from key
    fold_in(seed, 2**32 − 1) (a stream no iteration uses), batched like the minibatches;
    minibatch j of the run reads the corpus's batch j, so resume stays exact."""
    key = jax.random.fold_in(jax.random.key(self.config.seed), 2**32 - 1)
    prompts, prompt_len = self.task.sample_prompts(jax.random.fold_in(key, 0),
                                                   self.c.ptx_sequences)
    seq, seq_mask, *_ = self._sample(self.reference, jax.random.fold_in(key, 1), prompts,
                                     prompt_len, 1)
    arrays = to_host({"ptx_tokens": seq, "ptx_mask": seq_mask})
    return ArraySource(arrays, self.episodes // self.c.minibatches, seed=self.config.seed)

  def _rollout_forward(self, reference, critic, tokens, mask):
    """(reference log-probs [B, N], critic values [B, N]) of sampled episodes."""
    ref = nnx.merge(self.actor_graphdef, reference)
    ref_logprobs, _ = response_logprobs(ref, tokens, mask, self.prompt_width,
                                        self.c.temperature)
    values = response_values(nnx.merge(self.critic_graphdef, critic), tokens, mask,
                             self.prompt_width)
    return ref_logprobs, values

  def _sample(self, params, key, prompts, prompt_len, repeats: int):
    """Sampled episodes: (tokens, mask [B, W], response mask, log-probs [B, N], the
    prompt length of each row [B])."""
    tokens = np.repeat(prompts, repeats, axis=0)
    lengths = np.repeat(prompt_len, repeats)
    mask = np.arange(tokens.shape[1])[None] < lengths[:, None]
    batch = parallel.shard_batch({"tokens": tokens, "mask": mask}, self.mesh)
    out = generate(nnx.merge(self.actor_graphdef, params), batch["tokens"], batch["mask"],
                   key, self.sampling)
    seq, seq_mask = out.sequences()
    return seq, seq_mask, out.mask, out.logprobs, lengths

  def _scores(self, seq, seq_mask, lengths):
    """(objective scores [B, J], member rewards per model, gold terms {total, helpful,
    harmless, length} each [B]) of episodes."""
    tokens, mask = to_host(right_padded(seq, seq_mask))  # every process: all rows
    members = ppo_rewards.member_scores(self.scorers, tokens, mask)
    gold = {k: np.asarray(v) for k, v in
            self.task.gold_reward(tokens, mask, jnp.asarray(lengths)).items()}
    return ppo_rewards.objective_scores(members, self.score_cfg), members, gold

  def rollout(self, iteration: int):
    """The episodes of ``iteration`` with advantages and returns, and their metrics."""
    key = jax.random.fold_in(jax.random.key(self.config.seed), iteration)
    prompts, prompt_len = self.task.sample_prompts(jax.random.fold_in(key, 0), self.c.prompts)
    seq, seq_mask, response_mask, old_logprobs, lengths = self._sample(
        self.state["actor"], jax.random.fold_in(key, 1), prompts, prompt_len,
        self.c.samples_per_prompt)
    ref_logprobs, values = self._forward(self.reference, self.state["critic"], seq, seq_mask)
    scores, members, gold = self._scores(seq, seq_mask, lengths)
    r_ref = None
    if self.score_cfg.transform == "lsc":
      ref = self._sample(self.reference, jax.random.fold_in(key, 2), prompts, prompt_len,
                         self.config.reward.lsc_samples)
      ref_scores = self._scores(ref[0], ref[1], ref[4])[0]
      levels = ppo_rewards.reference_levels(
          ref_scores.reshape(self.c.prompts, self.config.reward.lsc_samples, -1), self.score_cfg)
      r_ref = np.repeat(levels, self.c.samples_per_prompt, axis=0)
    combined = ppo_rewards.transform(scores, r_ref, self.score_cfg)
    processed, moments = ppo_rewards.normalize(combined, self.state["moments"], self.score_cfg)
    kl_state = self.state["kl"]
    rewards = ppo.per_token_rewards(processed, old_logprobs, ref_logprobs, response_mask,
                                    kl_state.beta, self.c.kl_estimator)
    advantages, returns = ppo.gae(rewards, values, response_mask, self.c.gamma, self.c.lam)
    if self.c.whiten:
      advantages = ppo.whiten(advantages, response_mask, clip=self.c.advantage_clip or None)
    seq_kl = kl_lib.sequence_kl(old_logprobs, ref_logprobs, response_mask, "k1")
    self.state["kl"] = kl_lib.update_kl_controller(kl_state, jnp.mean(seq_kl), self.episodes)
    self.state["moments"] = moments
    episodes = {"tokens": seq, "mask": seq_mask, "response_mask": response_mask,
                "old_logprobs": old_logprobs, "old_values": values, "advantages": advantages,
                "returns": returns}
    metrics = {
        "score": float(np.mean(combined)), "score_processed": float(np.mean(processed)),
        "gold": float(np.mean(gold["total"])), "kl": float(jnp.mean(seq_kl)),
        **{f"gold_{k}": float(np.mean(v)) for k, v in gold.items() if k != "total"},
        **{f"proxy_{j}": float(v) for j, v in enumerate(np.mean(scores, axis=0))},
        "kl_half_squared": float(jnp.mean(kl_lib.sequence_kl(
            old_logprobs, ref_logprobs, response_mask, "k2"))),
        "response_length": float(jnp.mean(jnp.sum(response_mask, axis=1))),
        "ensemble_variance": float(np.mean([m.var(axis=-1).mean() for m in members])),
        "beta": float(kl_state.beta)}
    return episodes, metrics

  def minibatches(self, episodes, iteration: int):
    """The shuffled minibatches of every epoch, in order (a function of the iteration)."""
    size = self.episodes // self.c.minibatches
    host = to_host({k: episodes[k] for k in EPISODE_KEYS})
    for epoch in range(self.c.epochs):
      order = np.random.default_rng([self.config.seed, iteration, epoch]).permutation(
          self.episodes)
      for start in range(0, self.episodes, size):
        rows = order[start:start + size]
        batch = {k: v[rows] for k, v in host.items()}
        if self.ptx is not None:
          index = (iteration * self.c.epochs + epoch) * self.c.minibatches + start // size
          batch.update(self.ptx.batch(index))
        yield parallel.shard_batch(batch, self.mesh)

  def compile_update(self, batch):
    step = make_update(self.actor_graphdef, self.critic_graphdef, self.actor_tx,
                       self.critic_tx, self.prompt_width, self.c)
    model_keys = ("actor", "critic", "actor_opt", "critic_opt", "step")
    shardings = {k: self.shardings[k] for k in model_keys}
    compiled = parallel.compile_step(step, self.mesh, shardings,
                                     {k: v.ndim for k, v in batch.items()})

    def update(state, batch):
      models, metrics = compiled({k: state[k] for k in model_keys}, batch)
      return {**state, **models}, metrics

    return update


def train(config, scorers=None, task=None, critic_model=None) -> dict:
  """PPO per ``config`` (``rmjax/configs/ppo.py``); returns the last iteration's metrics.

  ``scorers`` (a list of ``(tokens, mask) -> [B, K]``), ``task`` and ``critic_model``
  replace the reward models of ``config.reward.workdirs``, their synthetic task and the
  critic's starting model (tests use a known reward function).
  """
  c = config.ppo
  if config.critic.init not in CRITIC_INITS:
    raise ValueError(f"critic.init={config.critic.init!r} is not one of {CRITIC_INITS}")
  mesh = parallel.make_mesh(parallel.MeshConfig(**config.mesh))
  if scorers is not None and task is None:
    raise ValueError("scorers given without the task whose prompts they score")
  if scorers is None:
    scorers, run_config = load_reward_models(tuple(config.reward.workdirs), mesh)
    task = task or task_of(run_config)
    critic_model = critic_model or first_member(scorers[0])
  if config.critic.init == "policy":
    critic_model = task.policy
  trainer = PPOTrainer(config, scorers, task, critic_model, mesh)
  tc = config.train
  checkpoints = tc.get("checkpoint_dir") or os.path.join(tc.workdir, "checkpoints")
  checkpointer = Checkpointer(checkpoints, keep=tc.keep_checkpoints,
                              interval=tc.save_every, provenance=provenance(config))
  restored = checkpointer.restore_latest(abstract_like(trainer.state, trainer.shardings))
  start = 0
  if restored is not None:
    start, trainer.state, _ = restored
    print(f"resumed from iteration {start} in {tc.workdir}")
  writer, progress = MetricsWriter(tc.workdir), Progress(start, c.iterations)
  update, metrics = None, {}
  try:
    with checkpointer.install_sigterm_handler():
      for iteration in range(start, c.iterations):
        episodes, metrics = trainer.rollout(iteration)
        losses = []
        for batch in trainer.minibatches(episodes, iteration):
          update = update or trainer.compile_update(batch)
          trainer.state, step_metrics = update(trainer.state, batch)
          losses.append(jax.device_get(step_metrics))
        metrics.update({k: float(np.mean([m[k] for m in losses])) for k in losses[0]})
        done = iteration + 1
        check_finite(metrics["policy_loss"] + metrics["value_loss"], done)
        writer.write(done, "train", metrics)
        if done % tc.log_every == 0 or done == c.iterations:
          progress.update(done, {k: metrics[k] for k in ("score", "gold", "kl")})
        checkpointer.save(done, trainer.state, {"iteration": done},
                          force=done == c.iterations or checkpointer.preempted)
        if checkpointer.preempted:
          print(f"SIGTERM: saved iteration {done}, exiting")
          break
  finally:
    checkpointer.wait()
    checkpointer.close()
    writer.close()
  return {"metrics": metrics, "workdir": tc.workdir}
