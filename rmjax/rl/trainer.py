"""The online RL program (``rmjax rl``): sample, score, advantages, compiled minibatch
updates, run by the one training loop (``rmjax.runtime.loop.run``). ``rl.algorithm``
(``rmjax.rl.algorithms``) picks PPO, RLOO, GRPO, Dr. GRPO or REINFORCE++.

The whole run is one carry, ``state``, passed through ``RLTrainer.step(state, i) ->
(state, metrics)``: actor, its optimizer state (and PPO's critic and its optimizer state),
the update counter, the KL controller, the running reward moments and the per-member
normalisation statistics (measured once on initial-policy samples). Iteration i
(``docs/algorithms.md`` §5, §5b):
  1. prompts drawn from key fold_in(seed, i), each sampled ``samples_per_prompt`` times
     with the KV-cache sampler (a prompt's samples in adjacent rows); its log-probs are
     the old log-probs;
  2. reference log-probs, critic values (PPO) and the score through the pipeline of
     ``rewards`` (reward sources → member normalisation → objective → transform →
     running normalisation → clip); the task's evaluation hook (the synthetic gold
     reward) is logged, never optimised;
  3. the algorithm's advantages (``algorithms.advantages``: GAE, leave-one-out, group-
     relative or REINFORCE++'s whitened returns), the KL in the reward or kept for the loss;
  4. ``epochs`` passes over ``minibatches`` shuffled minibatches, each one jitted update
     (``ppo_step.make_update``, which also reports ``loop.FINITE`` over the updated
     models), and the KL controller's update.
Every run logs the KL to the reference by the k1 ("kl"), k2 and k3 estimators, the
policy's entropy and the response length; on a task with gold, each iteration's
per-prompt gold, KL and length go to ``per_prompt.jsonl`` (``loop.ITEMS``). Everything
iteration i does is a function of (config, state, i), and every key derives from
(seed, i), so a run killed at any point resumes from its last checkpoint bit for bit.
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
from rmjax.objectives import calibration, constrained, running_stats, transforms
from rmjax.objectives import kl as kl_lib
from rmjax.parallel.sharding import to_host
from rmjax.rl import algorithms, build, policy_eval
from rmjax.rl import rewards as ppo_rewards
from rmjax.rl.best_of_n import right_padded
from rmjax.rl.ppo_step import episode_keys, make_update, response_logprobs, response_values
from rmjax.runtime import loop
from rmjax.runtime.checkpoint import Checkpointer, abstract_like, provenance
from rmjax.runtime.metrics import MetricsWriter, Progress
from rmjax.runtime.optim import make_optimizer
from rmjax.tasks import confidence

# Key streams no iteration uses: PPO-ptx's corpus and the member-normalisation samples.
PTX_STREAM, NORM_STREAM = 2**32 - 1, 2**32 - 2


class RLTrainer:
  """The models, compiled functions and score pipeline of one run of any
  ``rl.algorithm``; the state is not held here but passed through ``step``."""

  def __init__(self, config, sources, task, critic_model: Transformer | None, mesh=None):
    c = self.c = config.rl
    self.config = config
    self.s = algorithms.settings(c, config.kl)
    self.model_keys = (("actor", "critic", "actor_opt", "critic_opt", "step") if self.s.critic
                       else ("actor", "actor_opt", "step"))
    self.episode_keys = episode_keys(self.s)
    self.task = build.as_rollout_task(task)
    self.sources = [build.as_source(s, self.task.policy.cfg.vocab_size, j)
                    for j, s in enumerate(sources)]
    self.mesh = mesh or parallel.make_mesh(parallel.MeshConfig(**config.mesh))
    self.score_cfg = ppo_rewards.ScoreConfig.from_config(config.reward)
    thresholds = tuple(config.reward.get("thresholds", ()) or ())
    self.thresholds = None
    if thresholds:
      if len(thresholds) != len(self.sources):
        raise ValueError(f"reward.thresholds has {len(thresholds)} entries for "
                         f"{len(self.sources)} reward sources (one each)")
      if self.score_cfg.transform != "none" or self.score_cfg.weights:
        raise ValueError("reward.thresholds learn the sources' weights: use transform 'none' "
                         "and no reward.weights")
      self.thresholds = np.asarray(thresholds, np.float32)
    if self.score_cfg.calibration != "none" and self.task.confidence is None:
      raise ValueError(f"reward.calibration={self.score_cfg.calibration!r} calibrates the "
                       f"confidence responses state; {self.task.name} states none (the "
                       "synthetic task's responses do)")
    self.episodes = c.prompts * c.samples_per_prompt
    if self.episodes % c.minibatches:
      raise ValueError(f"rl.prompts x samples_per_prompt = {self.episodes} episodes do not "
                       f"split into rl.minibatches={c.minibatches}")
    self.sampling = SamplingConfig(
        max_new_tokens=c.max_new_tokens or self.task.max_response_len,
        temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, eos_id=self.task.eos_id,
        pad_id=self.task.pad_id)
    self.prompt_width = self.task.prompt_width
    self.task.check_fits(self.sampling.max_new_tokens, "rl.max_new_tokens")
    self.actor_graphdef, reference = nnx.split(
        lora.adapt_from_config(self.task.policy, config.get("actor"), config.seed))
    self.reference = parallel.shard_tree(reference, self.mesh)
    updates = c.iterations * c.epochs * c.minibatches
    self.actor_tx = make_optimizer_for(config.optim.actor, updates, reference)
    self.critic_graphdef = self._critic = self.critic_tx = None
    if self.s.critic:
      self.critic_graphdef, self._critic = build.critic_from(
          lora.adapt_from_config(critic_model, config.get("critic"), config.seed), self.mesh)
      self.critic_tx = make_optimizer_for(config.optim.critic, updates, self._critic)
    self._forward = jax.jit(parallel.sharding.on_mesh(self._rollout_forward, self.mesh))
    self.ptx = self._ptx_source() if c.ptx_coef else None
    self.shardings = None
    self._update = None
    # train(): the state starts with placeholder statistics and iteration 0 (which only a
    # fresh run executes; a resumed run restores them) measures them.
    self.measure_at_start = False

  # --- the state ------------------------------------------------------------------------

  def init_state(self, member_stats=None):
    """The state of iteration 0, on the mesh. ``member_stats``: None measures them
    (``measure_member_stats``) when ``reward.member_norm``; pass placeholders
    (``rewards.identity_stats``) when a checkpoint will replace them."""
    config = self.config
    if member_stats is None:
      member_stats = (self.measure_member_stats() if self.score_cfg.member_norm else
                      ppo_rewards.identity_stats(self.members_per_source()))
    if self.shardings is not None:
      raise RuntimeError("init_state builds the state once per trainer")
    actor = jax.tree.map(jnp.copy, self.reference)  # its own buffers: the update donates them
    models = {"actor": actor, "actor_opt": self.actor_tx.init(actor)}
    if self.s.critic:
      critic, self._critic = self._critic, None  # used once: the state owns it from now on
      models.update(critic=critic, critic_opt=self.critic_tx.init(critic))
    state = {**models, "step": jnp.zeros((), jnp.int32),
             "kl": (kl_lib.adaptive_kl_controller(config.kl.coef, config.kl.target,
                                                  config.kl.horizon)
                    if config.kl.adaptive else kl_lib.fixed_kl_controller(config.kl.coef)),
             "moments": running_stats.init_moments(),
             **({"multipliers": jnp.zeros(len(self.sources), jnp.float32)}
                if self.thresholds is not None else {}),
             # PPO-C's r̄ starts at 0, the mean of member-normalised scores at the start.
             **({"reward_ema": transforms.ema_init()}
                if self.score_cfg.calibration == "ppo_c" else {}),
             "member_stats": {str(j): s for j, s in enumerate(member_stats)}}
    self.shardings = parallel.tree_shardings(state, self.mesh)
    return jax.device_put(state, self.shardings)

  def members_per_source(self) -> list[int]:
    return [int(s.num_members) for s in self.sources]

  def member_stats_of(self, state) -> tuple[dict, ...]:
    """The state's normalisation statistics as a tuple of numpy {"mu", "sigma"}."""
    stats = to_host(state["member_stats"])
    return tuple(stats[str(j)] for j in range(len(self.sources)))

  def measure_member_stats(self) -> tuple[dict, ...]:
    """Per source, member mean and std on ``reward.norm_batches`` rollout-sized batches of
    reference-policy samples (batch b: prompts and samples from fold_in(key, b), key =
    fold_in(seed, NORM_STREAM)), shapes the rollout already compiled."""
    key = jax.random.fold_in(jax.random.key(self.config.seed), NORM_STREAM)
    batches = int(self.config.reward.get("norm_batches", 8))
    if batches < 1:
      raise ValueError(f"reward.norm_batches={batches} must be >= 1")
    rewards = [[] for _ in self.sources]
    for b in range(batches):
      k = jax.random.fold_in(key, b)
      prompts, prompt_len = self.task.sample_prompts(jax.random.fold_in(k, 0), self.c.prompts)
      seq, seq_mask, _, _, lengths = self._sample(self.reference, jax.random.fold_in(k, 1),
                                                  prompts, prompt_len, self.c.samples_per_prompt)
      tokens, mask = to_host(right_padded(seq, seq_mask))
      for j, m in enumerate(ppo_rewards.member_scores(self.sources, tokens, mask, lengths)):
        rewards[j].append(m)
    return ppo_rewards.member_stats([np.concatenate(r) for r in rewards])

  # --- the rollout ----------------------------------------------------------------------

  def _ptx_source(self):
    """PPO-ptx's corpus: ``ptx_sequences`` reference-policy samples, drawn once from key
    fold_in(seed, PTX_STREAM), batched like the minibatches; minibatch j of the run reads
    the corpus's batch j, so resume stays exact."""
    key = jax.random.fold_in(jax.random.key(self.config.seed), PTX_STREAM)
    prompts, prompt_len = self.task.sample_prompts(jax.random.fold_in(key, 0),
                                                   self.c.ptx_sequences)
    seq, seq_mask, *_ = self._sample(self.reference, jax.random.fold_in(key, 1), prompts,
                                     prompt_len, 1)
    arrays = to_host({"ptx_tokens": seq, "ptx_mask": seq_mask})
    return ArraySource(arrays, self.episodes // self.c.minibatches, seed=self.config.seed)

  def _rollout_forward(self, reference, critic, tokens, mask):
    """(reference log-probs [B, N], critic values [B, N] or None without a critic) of
    sampled episodes."""
    ref = nnx.merge(self.actor_graphdef, reference)
    ref_logprobs, _ = response_logprobs(ref, tokens, mask, self.prompt_width,
                                        self.c.temperature)
    if critic is None:
      return ref_logprobs, None
    values = response_values(nnx.merge(self.critic_graphdef, critic), tokens, mask,
                             self.prompt_width)
    return ref_logprobs, values

  def _sample(self, params, key, prompts, prompt_len, repeats: int):
    """Sampled episodes: (tokens, mask [B, W], response mask, log-probs [B, N], the
    prompt length of each row [B])."""
    # Each prompt is prefilled once and shared by its samples when the prompts alone
    # split over the data axes; otherwise they are repeated first (the same samples).
    shared = repeats if len(prompts) % parallel.data_parallel_size(self.mesh) == 0 else 1
    tokens = np.repeat(prompts, repeats // shared, axis=0)
    mask = np.arange(tokens.shape[1])[None] < np.repeat(prompt_len, repeats // shared)[:, None]
    batch = parallel.shard_batch({"tokens": tokens, "mask": mask}, self.mesh)
    out = generate(nnx.merge(self.actor_graphdef, params), batch["tokens"], batch["mask"],
                   key, self.sampling, samples_per_prompt=shared)
    lengths = np.repeat(prompt_len, repeats)
    seq, seq_mask = out.sequences()
    return seq, seq_mask, out.mask, out.logprobs, lengths

  def _scores(self, seq, seq_mask, lengths, stats):
    """(objective scores [B, J], member rewards per source, evaluation terms {total, ...}
    each [B] or None without an evaluation hook, stated confidences [B] or None without a
    confidence hook) of episodes."""
    tokens, mask = to_host(right_padded(seq, seq_mask))  # every process: all rows
    members, stds = ppo_rewards.member_scores_and_stds(self.sources, tokens, mask, lengths)
    gold = None
    if self.task.evaluate is not None:
      gold = {k: np.asarray(v) for k, v in
              self.task.evaluate(tokens, mask, jnp.asarray(lengths)).items()}
    stated = (None if self.task.confidence is None else
              np.asarray(self.task.confidence(tokens, mask, lengths)))
    scores = ppo_rewards.objective_scores(members, self.score_cfg, stats, stds)
    return scores, members, gold, stated

  def rollout(self, state, iteration: int):
    """(episodes with advantages and returns, metrics, the state's new "kl" and "moments")
    of ``iteration``; ``state`` is read, not changed."""
    key = jax.random.fold_in(jax.random.key(self.config.seed), iteration)
    stats = self.member_stats_of(state)
    prompts, prompt_len = self.task.sample_prompts(jax.random.fold_in(key, 0), self.c.prompts)
    seq, seq_mask, response_mask, old_logprobs, lengths = self._sample(
        state["actor"], jax.random.fold_in(key, 1), prompts, prompt_len,
        self.c.samples_per_prompt)
    ref_logprobs, values = self._forward(self.reference, state.get("critic"), seq, seq_mask)
    scores, members, gold, stated = self._scores(seq, seq_mask, lengths, stats)
    r_ref = None
    if self.score_cfg.transform == "lsc":
      samples = self.config.reward.lsc_samples
      ref = self._sample(self.reference, jax.random.fold_in(key, 2), prompts, prompt_len,
                         samples)
      ref_scores = self._scores(ref[0], ref[1], ref[4], stats)[0]
      levels = ppo_rewards.reference_levels(
          ref_scores.reshape(self.c.prompts, samples, -1), self.score_cfg)
      r_ref = np.repeat(levels, self.c.samples_per_prompt, axis=0)
    carried = {}
    if self.thresholds is not None:  # constrained RLHF: the multipliers weigh the sources
      nu = state["multipliers"]
      combined = np.asarray(transforms.weighted_sum(scores, constrained.multipliers(nu)))
      carried["multipliers"] = constrained.multiplier_step(
          nu, scores.mean(axis=0), self.thresholds, self.config.reward.constraint_lr)
    else:
      combined = ppo_rewards.transform(scores, r_ref, self.score_cfg)
    if self.score_cfg.calibration == "ppo_c":
      combined, carried["reward_ema"] = ppo_rewards.calibrate(
          combined, stated, state["reward_ema"], self.score_cfg)
    processed, moments = ppo_rewards.running_normalize(combined, state["moments"], self.score_cfg)
    kl_state = state["kl"]
    advantages, returns = algorithms.advantages(
        self.s, processed, old_logprobs, ref_logprobs, response_mask, kl_state.beta,
        self.c.samples_per_prompt, values, self.c)
    seq_kl = kl_lib.sequence_kl(old_logprobs, ref_logprobs, response_mask, "k1")
    new_kl = kl_lib.update_kl_controller(kl_state, jnp.mean(seq_kl), self.episodes)
    episodes = {"tokens": seq, "mask": seq_mask, "response_mask": response_mask,
                "old_logprobs": old_logprobs, "old_values": values, "advantages": advantages,
                "returns": returns, "ref_logprobs": ref_logprobs,
                "kl_coef": jnp.full((self.episodes,), kl_state.beta, jnp.float32)}
    metrics = {
        "score": float(np.mean(combined)), "score_processed": float(np.mean(processed)),
        "kl": float(jnp.mean(seq_kl)),
        **{f"proxy_{j}": float(v) for j, v in enumerate(np.mean(scores, axis=0))},
        **{f"kl_{e}": float(jnp.mean(kl_lib.sequence_kl(
            old_logprobs, ref_logprobs, response_mask, e))) for e in ("k2", "k3")},
        "response_length": float(jnp.mean(jnp.sum(response_mask, axis=1))),
        "ensemble_variance": float(np.mean([m.var(axis=-1).mean() for m in members])),
        "beta": float(kl_state.beta)}
    if gold is not None:
      metrics["gold"] = float(np.mean(gold["total"]))
      metrics.update({f"gold_{k}": float(np.mean(v)) for k, v in gold.items() if k != "total"})
      metrics[loop.ITEMS] = policy_eval.per_prompt(
          self.c.prompts, gold=gold["total"], kl=seq_kl,
          response_length=jnp.sum(response_mask, axis=1))
    if stated is not None:
      metrics["confidence"] = float(np.mean(stated))
      if gold is not None and self.task.quality_threshold is not None:
        right = confidence.correct(gold["total"], self.task.quality_threshold)
        metrics.update(ece=float(calibration.ece(stated, right, confidence.LEVELS)),
                       overconfidence=float(calibration.overconfidence(stated, right)))
    if self.thresholds is not None:
      mu = np.asarray(constrained.multipliers(state["multipliers"]))
      metrics.update({f"multiplier_{j}": float(m) for j, m in enumerate(mu)})
      metrics.update({f"constraint_{j}": float(g - t) for j, (g, t) in
                      enumerate(zip(scores.mean(axis=0), self.thresholds))})
    return episodes, metrics, {"kl": new_kl, "moments": moments, **carried}

  def minibatches(self, episodes, iteration: int):
    """The shuffled minibatches of every epoch, in order (a function of the iteration)."""
    size = self.episodes // self.c.minibatches
    host = to_host({k: episodes[k] for k in self.episode_keys})
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

  def update_fn(self):
    """The compiled minibatch update on the model part of the state (compiled once)."""
    if self._update is None:
      if self.shardings is None:
        raise RuntimeError("init_state first: the update is compiled for its shardings")
      step = make_update(self.actor_graphdef, self.critic_graphdef, self.actor_tx,
                         self.critic_tx, self.prompt_width, self.c, self.s)
      ndims = {k: 1 if k == "kl_coef" else 2 for k in self.episode_keys}
      if self.ptx is not None:
        ndims.update(ptx_tokens=2, ptx_mask=2)
      self._update = parallel.compile_step(step, self.mesh,
                                           {k: self.shardings[k] for k in self.model_keys},
                                           ndims)
    return self._update

  def step(self, state, iteration: int):
    """One PPO iteration: ``(state, metrics)`` of ``iteration`` from ``state``; metrics
    hold the rollout's and the mean of the minibatch updates', and ``loop.FINITE``: every
    updated actor and critic parameter of every minibatch was finite."""
    if iteration == 0 and self.measure_at_start and self.score_cfg.member_norm:
      stats = self.measure_member_stats()
      state = {**state, "member_stats": jax.device_put(
          {str(j): s for j, s in enumerate(stats)}, self.shardings["member_stats"])}
    episodes, metrics, carried = self.rollout(state, iteration)
    update = self.update_fn()
    models = {k: state[k] for k in self.model_keys}
    losses = []
    for batch in self.minibatches(episodes, iteration):
      models, step_metrics = update(models, batch)
      losses.append(step_metrics)
    losses = jax.device_get(losses)
    metrics.update({k: float(np.mean([m[k] for m in losses])) for k in losses[0]
                    if k != loop.FINITE})
    metrics[loop.FINITE] = bool(all(m[loop.FINITE] for m in losses))
    return {**state, **models, **carried}, metrics


def make_optimizer_for(cfg, updates: int, params):
  """An optimizer of ``params`` whose LoRA-frozen leaves keep no state."""
  return make_optimizer(cfg, updates, lora.trainable_mask(params))


def build_run(config, scorers=None, task=None, critic_model=None, mesh=None):
  """(trainer, mesh) of ``config``: the reward sources of ``reward.workdirs`` (or
  ``scorers``), the rollout task of its ``policy``/``prompts`` sections (or ``task``), every
  source checked against the policy, and the critic's starting model."""
  if config.critic.init not in build.CRITIC_INITS:
    raise ValueError(f"critic.init={config.critic.init!r} is not one of {build.CRITIC_INITS}")
  mesh = mesh or parallel.make_mesh(parallel.MeshConfig(**config.mesh))
  if scorers is not None and task is None:
    raise ValueError("scorers given without the task whose prompts they score")
  gold = bool((config.get("evaluate") or {}).get("gold", True))
  if scorers is None:
    workdirs = tuple(config.reward.workdirs)
    sources = (build.load_reward_sources(workdirs, mesh)
               if workdirs or not config.reward.get("rules") else [])
    rollout = build.rollout_task(config, sources, gold) if task is None else \
        build.as_rollout_task(task, gold)
    if (critic_model is None and config.critic.init == "reward_model"
        and algorithms.settings(config.rl, config.kl).critic):
      if not sources or not hasattr(sources[0], "ensemble"):
        raise ValueError("critic.init='reward_model' needs a train-rm run first in "
                         "reward.workdirs; otherwise set critic.init='policy' or use a "
                         "critic-free algorithm")
      critic_model = build.first_member(sources[0])
    sources = sources + build.rule_sources(config, rollout, sources)
    build.check_sources(sources, rollout)
  else:
    rollout = build.as_rollout_task(task, gold)
    sources = [build.as_source(s, rollout.policy.cfg.vocab_size, j)
               for j, s in enumerate(scorers)]
    build.check_sources(sources, rollout)
  if config.critic.init == "policy" or critic_model is None:
    critic_model = rollout.policy
  if not algorithms.settings(config.rl, config.kl).critic:
    critic_model = None  # a critic-free algorithm builds no critic
  for source in sources:
    print(f"reward source {source.name}: {getattr(source, 'scale', 'scale not stated')}")
  return RLTrainer(config, sources, rollout, critic_model, mesh), mesh


def train(config, scorers=None, task=None, critic_model=None) -> dict:
  """PPO per ``config`` (``rmjax/configs/rl.py``) on ``loop.run``; returns the last
  iteration's metrics, the member statistics and the workdir.

  ``scorers`` (reward sources, or ``(tokens, mask) -> [B, K]`` functions), ``task`` (a
  ``RolloutTask`` or a synthetic task) and ``critic_model`` replace the reward models of
  ``config.reward.workdirs``, the rollout task of the config and the critic's starting
  model (tests use a known reward function). Raises ``loop.NonFiniteError`` or
  ``loop.Preempted``.
  """
  c, tc = config.rl, config.train
  trainer, _ = build_run(config, scorers, task, critic_model)
  checkpoints = tc.get("checkpoint_dir") or os.path.join(tc.workdir, "checkpoints")
  checkpointer = Checkpointer(checkpoints, keep=tc.keep_checkpoints,
                              interval=tc.save_every, provenance=provenance(config))
  # Placeholder statistics: a resumed run restores its own, a fresh one measures them in
  # iteration 0 (never twice).
  state = trainer.init_state(ppo_rewards.identity_stats(trainer.members_per_source()))
  trainer.measure_at_start = True
  result = loop.run(
      state=state, step_fn=trainer.step, batches=lambda iteration: iteration,
      steps=c.iterations, checkpointer=checkpointer, writer=MetricsWriter(tc.workdir),
      progress=Progress(0, c.iterations), log_every=1, progress_every=tc.log_every,
      restore_target=abstract_like(state, trainer.shardings),
      finite_keys=("policy_loss", "value_loss") if trainer.s.critic else ("policy_loss",),
      progress_keys=("score", "gold", "kl"), extra=lambda done: {"iteration": done},
      unit="iteration",
      on_resume=lambda start: print(f"resumed from iteration {start} in {tc.workdir}"))
  return {"metrics": result.metrics, "workdir": tc.workdir,
          "member_stats": trainer.member_stats_of(result.state)}
