"""The direct preference optimisation program (``rmjax dpo``): a policy trained on
preference pairs by one of ``objectives.dpo.LOSSES``, on the one training loop.

Data are ``rmjax train-rm``'s (``rm.batches.load``: the synthetic task's pairs or
preference files), each pair prompt + response joined per side with its prompt length.
The state is ``{"params", "opt_state", "step"}``; the frozen reference is held beside it
and passed to the jitted step, never checkpointed (it is the starting policy, rebuilt from
the config). With ``dpo.reference="precomputed"`` its log-probs of every training pair
are computed once before training (the pair's "index" finds them) and the step runs the
policy alone. Every batch is a pure function of the step, so a killed run resumes bit
for bit.

The evaluation scores the held-out pairs by the loss's implicit reward (accuracy, margin)
and, on the synthetic task, samples ``train.eval_prompts`` responses from the policy and
logs their gold reward and their KL to the reference (k1, summed per response), beside
the gold of the reference's own samples from the same prompts and keys ("gold_reference").
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rmjax import parallel
from rmjax.data import schema
from rmjax.data.array_source import padded_batches
from rmjax.objectives import dpo as dpo_lib
from rmjax.parallel.sharding import to_host
from rmjax.rl import build, policy_eval
from rmjax.rl.implicit_reward import sequence_logprobs
from rmjax.rm import batches as rm_batches
from rmjax.rm.strength import INDEX
from rmjax.runtime import loop
from rmjax.runtime.checkpoint import Checkpointer, abstract_like, provenance
from rmjax.runtime.metrics import MetricsWriter, Progress
from rmjax.runtime.optim import make_optimizer
from rmjax.tasks import preference as synthetic

PAIR_KEYS = (schema.CHOSEN_TOKENS, schema.CHOSEN_MASK, schema.REJECTED_TOKENS,
             schema.REJECTED_MASK, "prompt_len", schema.WEIGHT)
REF_CHOSEN, REF_REJECTED = "ref_chosen", "ref_rejected"  # precomputed reference log-probs
# iterative DPO with dpo.online.optimism > 0: SELM's y_ref, one sampled response per pair
EXPLORE_TOKENS, EXPLORE_MASK = "explore_tokens", "explore_mask"
REFERENCES = ("model", "precomputed")


def pair_logprobs(model, batch):
  """(log π chosen, log π rejected, |chosen|, |rejected|), each [B]: both sides in one
  forward pass of 2B rows."""
  b = batch[schema.CHOSEN_TOKENS].shape[0]
  tokens = jnp.concatenate([batch[schema.CHOSEN_TOKENS], batch[schema.REJECTED_TOKENS]])
  mask = jnp.concatenate([batch[schema.CHOSEN_MASK], batch[schema.REJECTED_MASK]])
  plen = jnp.concatenate([batch["prompt_len"], batch["prompt_len"]])
  logp, count = sequence_logprobs(model, tokens, mask, plen)
  return logp[:b], logp[b:], count[:b], count[b:]


def make_loss(graphdef, cfg):
  """``loss(params, reference, batch) -> (weighted mean loss, metrics)`` of the ``dpo``
  section ``cfg``; the reference's log-probs come from the batch when it has them, from
  ``reference`` (params, no gradient) otherwise, or are zeros for simpo and orpo. A batch
  with ``EXPLORE_TOKENS`` (iterative DPO's) adds SELM's optimism term of those rows, with
  α = ``cfg.online.optimism``, to each pair's loss and logs its mean as "optimism"."""

  def loss(params, reference, batch):
    lc, lr, nc, nr = pair_logprobs(nnx.merge(graphdef, params), batch)
    if REF_CHOSEN in batch:
      rc, rr = batch[REF_CHOSEN], batch[REF_REJECTED]
    elif reference is not None:
      rc, rr, _, _ = jax.lax.stop_gradient(pair_logprobs(nnx.merge(graphdef, reference), batch))
    else:
      rc = rr = jnp.zeros_like(lc)
    losses, metrics = dpo_lib.losses(cfg.loss, cfg, lc, lr, rc, rr, nc, nr)
    w = batch[schema.WEIGHT].astype(jnp.float32)
    mean = lambda x: jnp.sum(w * x) / jnp.maximum(jnp.sum(w), 1e-8)
    if EXPLORE_TOKENS in batch:
      rows = (batch[EXPLORE_TOKENS], batch[EXPLORE_MASK], batch["prompt_len"])
      ly, _ = sequence_logprobs(nnx.merge(graphdef, params), *rows)
      ry, _ = jax.lax.stop_gradient(sequence_logprobs(nnx.merge(graphdef, reference), *rows))
      optimism = dpo_lib.selm_optimism(ly, ry, cfg.online.optimism, cfg.beta)
      losses = losses + optimism
      metrics = {**metrics, "optimism": mean(optimism)}
    total = mean(losses)
    return total, {**metrics, "loss": total, "logp_chosen": jnp.mean(lc),
                   "logp_rejected": jnp.mean(lr)}

  return loss


def make_step(graphdef, tx: optax.GradientTransformation, cfg):
  """``step(state, reference, batch) -> (state, metrics)``: one AdamW update; metrics of
  ``make_loss`` plus grad_norm and ``loop.FINITE`` over the updated parameters."""
  loss = make_loss(graphdef, cfg)

  def step(state, reference, batch):
    grads, metrics = jax.grad(loss, has_aux=True)(state["params"], reference, batch)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics.update(grad_norm=optax.tree.norm(grads), **{loop.FINITE: loop.all_finite(params)})
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return step


def compile_step(graphdef, tx, cfg, mesh, shardings, reference, ndims: dict[str, int]):
  """``make_step`` jitted on ``mesh`` as ``(state, reference, batch) -> (state, metrics)``:
  the state on its ``shardings`` (donated), reference parameters laid out like
  ``reference`` (None: no reference in the step), a batch of arrays of ``ndims`` split over
  the data axes; shared by offline and iterative DPO."""
  batch_shardings = {k: parallel.sharding.batch_sharding(mesh, n) for k, n in ndims.items()}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(parallel.sharding.on_mesh(make_step(graphdef, tx, cfg), mesh),
                 in_shardings=(shardings, parallel.tree_shardings(reference, mesh),
                               batch_shardings),
                 out_shardings=(shardings, replicated), donate_argnums=(0,))


class DPOTrainer:
  """The policy, reference, data and compiled functions of one run; the state is passed
  through ``step``."""

  def __init__(self, config, mesh=None):
    c = self.c = config.dpo
    if c.loss not in dpo_lib.LOSSES:
      raise ValueError(f"dpo.loss={c.loss!r} is not one of {dpo_lib.LOSSES}")
    if c.reference not in REFERENCES:
      raise ValueError(f"dpo.reference={c.reference!r} is not one of {REFERENCES}")
    if c.online.optimism:
      raise ValueError(f"dpo.online.optimism={c.online.optimism} is SELM's term on the "
                       "responses a round samples: set dpo.online.rounds > 0")
    prompts = str((config.get("prompts") or {}).get("path", "") or "")
    if prompts:
      raise ValueError(f"prompts.path={prompts} is read by iterative DPO only: set "
                       "dpo.online.rounds > 0, or give offline pairs in the data section")
    self.config = config
    self.mesh = mesh or parallel.make_mesh(parallel.MeshConfig(**config.mesh))
    tc = config.train
    if not config.policy.init_from and config.data.source != "synthetic":
      raise ValueError("policy.init_from is empty, so the policy is the synthetic task's, "
                       f"but data.source={config.data.source!r}: set policy.init_from")
    self.task = None  # the synthetic task, when the data are its pairs: the gold hook
    if config.data.source == "synthetic":
      self.task = synthetic.build_task(synthetic.from_fields(config.data.synthetic.to_dict()))
    policy = (build.policy_from(str(config.policy.init_from)) if config.policy.init_from
              else self.task.policy)
    self.data = rm_batches.load(config.data, tc.batch_size, config.seed)
    if self.data.vocab_size > policy.cfg.vocab_size:
      raise ValueError(f"the data's vocabulary of {self.data.vocab_size} ids does not fit "
                       f"the policy's {policy.cfg.vocab_size}")
    self.graphdef, reference = nnx.split(policy)
    self.reference = parallel.shard_tree(reference, self.mesh)
    self.tx = make_optimizer(config.optim, tc.steps, None)
    self.uses_reference = c.loss in dpo_lib.NEEDS_REFERENCE
    graphdef = self.graphdef
    # One compiled pair forward for the reference table and every evaluation.
    self._pair_forward = jax.jit(lambda p, b: pair_logprobs(nnx.merge(graphdef, p), b))
    self._eval_reference = None  # the reference's held-out log-probs, computed once
    self.precomputed = None
    if self.uses_reference and c.reference == "precomputed":
      self.precomputed = self._reference_table()
    self.shardings = None
    self._step = None
    self.gold = (policy_eval.GoldProbe(self.task, self.graphdef, self.reference, config.seed,
                                       tc.eval_prompts, self.mesh)
                 if self.task is not None and tc.eval_prompts else None)

  def init_state(self):
    state, self.shardings = build.policy_state(self.reference, self.tx, self.mesh)
    return state

  def _reference_table(self) -> np.ndarray:
    """[num_train_pairs, 2] the reference's (chosen, rejected) log-probs of every training
    pair, by its index."""
    pairs = rm_batches.train_pairs(self.config.data)
    rows = self.config.train.batch_size
    parts = []
    for batch, real in padded_batches({k: pairs[k] for k in PAIR_KEYS}, rows):
      lc, lr = to_host(self._pair_forward(self.reference,
                                          parallel.shard_batch(batch, self.mesh))[:2])
      parts.append(np.stack([lc, lr], axis=1)[:real])
    return np.concatenate(parts)

  def batch(self, step: int) -> dict:
    raw = self.data.train.batch(step)
    batch = {k: raw[k] for k in PAIR_KEYS}
    if self.precomputed is not None:
      ref = self.precomputed[raw[INDEX]]
      batch.update({REF_CHOSEN: ref[:, 0], REF_REJECTED: ref[:, 1]})
    return batch

  def step_fn(self):
    """``(state, batch) -> (state, metrics)``, compiled once for the state's shardings."""
    if self._step is None:
      if self.shardings is None:
        raise RuntimeError("init_state first: the step is compiled for its shardings")
      reference = self.reference if self.uses_reference and self.precomputed is None else None
      jitted = compile_step(self.graphdef, self.tx, self.c, self.mesh, self.shardings,
                            reference, {k: v.ndim for k, v in self.batch(0).items()})
      self._step = lambda state, batch: jitted(state, reference, batch)
    return self._step

  # --- evaluation ------------------------------------------------------------------------

  def evaluate(self, state) -> dict:
    """Implicit-reward metrics of the held-out pairs; on the synthetic task also the gold
    reward of policy samples and their KL to the reference."""
    lc, lr, nc, nr = self._eval_logprobs(state["params"])
    if self._eval_reference is None:  # the frozen reference's never change
      self._eval_reference = self._eval_logprobs(self.reference)[:2]
    rc, rr = self._eval_reference
    if not self.uses_reference:
      rc, rr = np.zeros_like(lc), np.zeros_like(lr)
    losses, metrics = dpo_lib.losses(self.c.loss, self.c, lc, lr, rc, rr, nc, nr)
    out = {"loss": float(np.mean(losses)), **{k: float(v) for k, v in metrics.items()}}
    if self.gold is not None:
      out.update(self.gold(state["params"]))
    return out

  def _eval_logprobs(self, params) -> list[np.ndarray]:
    """(chosen, rejected log-probs, chosen, rejected response lengths) of every held-out
    pair under ``params``."""
    parts = []
    for batch, real in padded_batches({k: self.data.eval[k] for k in PAIR_KEYS},
                                      self.config.train.batch_size):
      out = self._pair_forward(params, parallel.shard_batch(batch, self.mesh))
      parts.append([x[:real] for x in to_host(out)])
    return [np.concatenate(x) for x in zip(*parts)]


def train(config) -> dict:
  """DPO (or another ``dpo.loss``) per ``config`` (``rmjax/configs/dpo.py``) on
  ``loop.run``; returns the last evaluation, the last step's metrics and the workdir."""
  tc = config.train
  trainer = DPOTrainer(config)
  state = trainer.init_state()
  checkpoints = tc.get("checkpoint_dir") or os.path.join(tc.workdir, "checkpoints")
  checkpointer = Checkpointer(checkpoints, keep=tc.keep_checkpoints, interval=tc.save_every,
                              provenance=provenance(config, trainer.data.data_hash))
  result = loop.run(
      state=state, step_fn=trainer.step_fn(), steps=tc.steps,
      batches=lambda step: parallel.shard_batch(trainer.batch(step), trainer.mesh),
      checkpointer=checkpointer, writer=MetricsWriter(tc.workdir),
      progress=Progress(0, tc.steps), log_every=tc.log_every, eval_every=tc.eval_every,
      evaluate=trainer.evaluate, restore_target=abstract_like(state, trainer.shardings),
      progress_keys=("loss", "reward_accuracy"),
      on_resume=lambda step: print(f"resumed from step {step} in {tc.workdir}"))
  return {"eval": result.eval, "metrics": result.metrics, "workdir": tc.workdir}
