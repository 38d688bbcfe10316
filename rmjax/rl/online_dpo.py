"""Iterative (online) DPO (``rmjax dpo`` with ``dpo.online.rounds > 0``): each round samples
``samples`` responses to ``prompts`` prompts from the current policy, labels pairs among
them, and takes ``updates`` DPO steps (``dpo.loss``) on those pairs. The prompts are the
synthetic task's, or, with ``prompts.path``, a prompts file read as ``rmjax rl`` reads it
(``build.rollout_task``: a policy from ``policy.init_from``, its tokenizer, no gold
reward), its labeller checked against the policy's vocabulary, tokenizer and task.

Labellers (``dpo.online.labeller``): "reward", the members' mean of a ``train-rm`` run
(``dpo.online.reward``), or "implicit", the policy's own implicit reward β·log(π/π_ref)
summed over the response, as "Aligning Large Language Models with Self-generated
Preference Data" (SPA) labels its own samples; it goes on from an ``rmjax dpo`` run (trained
on seed pairs: ``policy.init_from``) against that run's reference. Pairs (``dpo.online.pairs``): "best_worst",
each prompt's highest against its lowest scored sample (a prompt whose samples tie
weighs 0), or "all", every two samples of a prompt, the higher scored as chosen (ties 0).
The DPO steps' reference (``dpo.online.reference``) is the starting policy (SPA: the DPO
run's own reference), or "previous": the policy the round starts from, which sampled its
responses (SELM's). With ``dpo.online.optimism`` α > 0 each pair's loss adds SELM's optimism
term (``objectives.dpo.selm_optimism``) of one of its prompt's samples, drawn uniformly with
the round's key, against that same reference (``docs/algorithms.md`` §7). The logged KL is
always to the starting policy. One round is one step of the training loop, so
every checkpoint falls between rounds and, as every key derives from (seed, round), a
killed run resumes bit for bit. Each round logs the DPO metrics (means over its updates),
the labeller's chosen − rejected gap, and on the synthetic task the gold reward and the k1
KL to the starting policy of the round's samples (per prompt too, in ``per_prompt.jsonl``).
"""

from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rmjax import parallel
from rmjax.data import schema
from rmjax.models.sampler import SamplingConfig, generate
from rmjax.objectives import dpo as dpo_lib
from rmjax.objectives import kl as kl_lib
from rmjax.parallel.sharding import to_host
from rmjax.rl import build, dpo, policy_eval
from rmjax.rl import rewards as rl_rewards
from rmjax.rl.best_of_n import right_padded
from rmjax.rl.implicit_reward import ImplicitRewardSource
from rmjax.rl.ppo_step import response_logprobs
from rmjax.rm import reward_source
from rmjax.runtime import loop
from rmjax.runtime.checkpoint import Checkpointer, abstract_like, provenance
from rmjax.runtime.metrics import MetricsWriter, Progress
from rmjax.runtime.optim import make_optimizer
from rmjax.tasks import preference as synthetic

LABELLERS = ("reward", "implicit")
PAIRINGS = ("best_worst", "all")
REFERENCES = ("start", "previous")


def pair_indices(scores: np.ndarray, pairing: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(chosen, rejected, weight) over the samples [P, k] of ``scores``: flat row indices
  p·k + i and a weight of 0 where the two scores tie."""
  p, k = scores.shape
  if pairing == "best_worst":
    best, worst = np.argmax(scores, axis=1), np.argmin(scores, axis=1)
    chosen, rejected = np.arange(p) * k + best, np.arange(p) * k + worst
  elif pairing == "all":
    i, j = (np.array(x) for x in zip(*itertools.combinations(range(k), 2)))
    first = scores[:, i] >= scores[:, j]
    base = (np.arange(p) * k)[:, None]
    chosen = (base + np.where(first, i, j)).reshape(-1)
    rejected = (base + np.where(first, j, i)).reshape(-1)
  else:
    raise ValueError(f"dpo.online.pairs={pairing!r} is not one of {PAIRINGS}")
  flat = scores.reshape(-1)
  weight = (flat[chosen] != flat[rejected]).astype(np.float32)
  return chosen, rejected, weight


class OnlineDPOTrainer:
  """Policy, reference, labeller and compiled step of one online run."""

  def __init__(self, config, mesh=None):
    c = self.c = config.dpo
    o = self.o = c.online
    for name, value, allowed in (("labeller", o.labeller, LABELLERS),
                                 ("pairs", o.pairs, PAIRINGS)):
      if value not in allowed:
        raise ValueError(f"dpo.online.{name}={value!r} is not one of {allowed}")
    path = str((config.get("prompts") or {}).get("path", "") or "")
    if not path and config.data.source != "synthetic":
      raise ValueError("dpo.online samples the synthetic task's prompts unless prompts.path "
                       f"is given: data.source must be 'synthetic', not {config.data.source!r}")
    if path and not config.policy.init_from:
      raise ValueError(f"prompts.path={path} needs policy.init_from (a Hugging Face folder, "
                       "a .gguf file or an rl, dpo or sft run): the synthetic policy and its "
                       "gold reward belong to the synthetic prompts")
    if o.samples < 2:
      raise ValueError(f"dpo.online.samples={o.samples} must be >= 2 to form a pair")
    reference = o.get("reference", "start")
    if reference not in REFERENCES:
      raise ValueError(f"dpo.online.reference={reference!r} is not one of {REFERENCES}")
    if reference == "previous" and c.loss not in dpo_lib.NEEDS_REFERENCE:
      raise ValueError(f"dpo.online.reference='previous' sets the reference of a loss that "
                       f"has one; dpo.loss={c.loss!r} uses none")
    self.optimism = float(o.optimism)
    if self.optimism < 0:
      raise ValueError(f"dpo.online.optimism={o.optimism} must be >= 0 (0 = off)")
    if self.optimism and c.loss not in dpo_lib.OPTIMISM_LOSSES:
      raise ValueError(f"dpo.online.optimism={o.optimism} is SELM's term beside the sigmoid "
                       f"DPO loss: set dpo.loss='dpo', not {c.loss!r}")
    self.config = config
    self.mesh = mesh or parallel.make_mesh(parallel.MeshConfig(**config.mesh))
    self.labeller = None
    if o.labeller == "reward":
      self.labeller = reward_source.from_workdir(o.reward, self.mesh)
    if path:  # rl's prompt reader: the policy of policy.init_from and its tokenizer
      self.task = build.rollout_task(config, [self.labeller] if self.labeller else [],
                                     gold=False)
      policy = self.task.policy
      self.task.check_fits(self.task.max_response_len, "prompts.max_response_len")
    else:
      self.task = build.synthetic_rollout_task(
          synthetic.build_task(synthetic.from_fields(config.data.synthetic.to_dict())))
      policy = (build.policy_from(str(config.policy.init_from)) if config.policy.init_from
                else self.task.policy)
    reference = policy
    if o.labeller == "implicit":  # SPA: go on from a DPO run, against its own reference
      run = (build.read_run_config(config.policy.init_from) if config.policy.init_from
             else {})
      if build.run_program(run) != "dpo":
        raise ValueError("dpo.online.labeller='implicit' labels with the policy's implicit "
                         "reward, which is 0 until it differs from its reference: set "
                         "policy.init_from to an rmjax dpo run (trained on seed pairs)")
      reference = build.starting_policy(run)
    self.graphdef, reference = nnx.split(reference)
    self.reference = parallel.shard_tree(reference, self.mesh)
    self.start = parallel.shard_tree(nnx.state(policy), self.mesh)
    pairs = o.prompts * (1 if o.pairs == "best_worst" else o.samples * (o.samples - 1) // 2)
    if pairs % o.updates:
      raise ValueError(f"{pairs} pairs a round do not split into dpo.online.updates="
                       f"{o.updates} minibatches")
    self.pairs_per_round, self.minibatch = pairs, pairs // o.updates
    self.tx = make_optimizer(config.optim, o.rounds * o.updates, None)
    self.sampling = SamplingConfig(max_new_tokens=self.task.max_response_len,
                                   temperature=o.temperature, eos_id=self.task.eos_id,
                                   pad_id=self.task.pad_id)
    # SPA's labeller: the implicit reward of the current parameters (set each round)
    self.own = ImplicitRewardSource(policy, policy, c, "the policy's implicit reward")
    if self.labeller is not None and path:
      build.check_sources([self.labeller], self.task)
    elif self.labeller is not None:
      reward_source.check_compatible([self.labeller], vocab_size=policy.cfg.vocab_size,
                                     what="the policy")
    self.uses_reference = c.loss in dpo_lib.NEEDS_REFERENCE
    self.batch_keys = dpo.PAIR_KEYS + ((dpo.EXPLORE_TOKENS, dpo.EXPLORE_MASK)
                                       if self.optimism else ())
    self.shardings = self._update = None

  def init_state(self):
    state, self.shardings = build.policy_state(self.start, self.tx, self.mesh)
    return state

  def _labels(self, params, tokens, mask, prompt_len) -> np.ndarray:
    if self.labeller is not None:
      (members,) = rl_rewards.member_scores([self.labeller], tokens, mask, prompt_len)
      return members.mean(axis=-1)
    self.own.params, self.own.reference = params, self.reference
    return np.asarray(self.own(tokens, mask, prompt_len))[:, 0]

  def rollout(self, params, r: int):
    """(pairs batch, metrics) of round ``r``'s samples of ``params``."""
    o = self.o
    key = jax.random.fold_in(jax.random.key(self.config.seed), r)
    prompts, prompt_len = self.task.sample_prompts(jax.random.fold_in(key, 0), o.prompts)
    mask = np.arange(prompts.shape[1])[None] < prompt_len[:, None]
    batch = parallel.shard_batch({"tokens": prompts, "mask": mask}, self.mesh)
    out = generate(nnx.merge(self.graphdef, params), batch["tokens"], batch["mask"],
                   jax.random.fold_in(key, 1), self.sampling, samples_per_prompt=o.samples)
    seq, seq_mask = out.sequences()
    ref_logp, _ = response_logprobs(nnx.merge(self.graphdef, self.reference), seq, seq_mask,
                                    prompts.shape[1])
    kl = kl_lib.sequence_kl(out.logprobs, ref_logp, out.mask, "k1")
    tokens, tmask = to_host(right_padded(seq, seq_mask))
    lengths = np.repeat(prompt_len, o.samples).astype(np.int32)
    scores = self._labels(params, tokens, tmask, lengths)
    chosen, rejected, weight = pair_indices(scores.reshape(o.prompts, o.samples), o.pairs)
    pairs = {schema.CHOSEN_TOKENS: tokens[chosen], schema.CHOSEN_MASK: tmask[chosen],
             schema.REJECTED_TOKENS: tokens[rejected], schema.REJECTED_MASK: tmask[rejected],
             "prompt_len": lengths[chosen], schema.WEIGHT: weight}
    if self.optimism:  # SELM's y_ref: one of the pair's prompt's samples, uniformly
      pick = np.asarray(jax.random.randint(jax.random.fold_in(key, 2), chosen.shape, 0,
                                           o.samples))
      rows = chosen // o.samples * o.samples + pick
      pairs.update({dpo.EXPLORE_TOKENS: tokens[rows], dpo.EXPLORE_MASK: tmask[rows]})
    metrics = {"kl": float(jnp.mean(kl)),
               "label_gap": float(np.mean(scores[chosen] - scores[rejected])),
               "tied_pairs": float(np.mean(weight == 0)),
               "response_length": float(np.mean(np.asarray(out.mask).sum(axis=1)))}
    if self.task.evaluate is not None:
      gold = self.task.evaluate(tokens, tmask, jnp.asarray(lengths))["total"]
      metrics["gold"] = float(np.mean(np.asarray(gold)))
      metrics[loop.ITEMS] = policy_eval.per_prompt(o.prompts, gold=gold, kl=kl)
    return pairs, metrics

  def update_fn(self):
    """The compiled ``(state, reference, batch) -> (state, metrics)`` DPO step."""
    if self._update is None:
      reference = self.reference if self.uses_reference else None
      ndims = {k: 1 if k in ("prompt_len", schema.WEIGHT) else 2 for k in self.batch_keys}
      self._update = dpo.compile_step(self.graphdef, self.tx, self.c, self.mesh,
                                      self.shardings, reference, ndims)
    return self._update

  def round_reference(self, state):
    """The reference of a round's DPO steps: none for losses without one, the starting
    policy, or (``dpo.online.reference='previous'``, SELM's) a copy of the parameters the
    round starts from, which sampled its responses."""
    if not self.uses_reference:
      return None
    if self.o.get("reference", "start") == "previous":
      return jax.tree.map(jnp.copy, state["params"])  # the steps donate the state's own
    return self.reference

  def step(self, state, r: int):
    """One round: sample, label, ``updates`` DPO steps on the shuffled pairs."""
    pairs, metrics = self.rollout(state["params"], r)
    order = np.random.default_rng([self.config.seed, r]).permutation(self.pairs_per_round)
    update, reference, losses = self.update_fn(), self.round_reference(state), []
    for start in range(0, self.pairs_per_round, self.minibatch):
      rows = order[start:start + self.minibatch]
      state, m = update(state, reference,
                        parallel.shard_batch({k: v[rows] for k, v in pairs.items()}, self.mesh))
      losses.append(m)
    losses = jax.device_get(losses)
    metrics.update({k: float(np.mean([m[k] for m in losses])) for k in losses[0]
                    if k != loop.FINITE})
    metrics[loop.FINITE] = bool(all(m[loop.FINITE] for m in losses))
    return state, metrics


def train(config) -> dict:
  """Online DPO per ``config`` (``rmjax/configs/dpo.py`` with ``dpo.online.rounds > 0``)."""
  tc, rounds = config.train, int(config.dpo.online.rounds)
  trainer = OnlineDPOTrainer(config)
  state = trainer.init_state()
  checkpoints = tc.get("checkpoint_dir") or os.path.join(tc.workdir, "checkpoints")
  checkpointer = Checkpointer(checkpoints, keep=tc.keep_checkpoints, interval=tc.save_every,
                              provenance=provenance(config))
  result = loop.run(
      state=state, step_fn=trainer.step, batches=lambda r: r, steps=rounds,
      checkpointer=checkpointer, writer=MetricsWriter(tc.workdir), progress=Progress(0, rounds),
      log_every=1, progress_every=tc.log_every, restore_target=abstract_like(
          state, trainer.shardings), progress_keys=("loss", "gold", "kl"), unit="round",
      on_resume=lambda r: print(f"resumed from round {r} in {tc.workdir}"))
  return {"eval": None, "metrics": result.metrics, "workdir": tc.workdir}
