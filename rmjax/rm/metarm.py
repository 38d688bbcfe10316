"""MetaRM (Secrets of RLHF II, Alg. 1; ``docs/algorithms.md`` §2) as a member update.

A meta set X_s holds k responses to each of P prompts from a (shifted) policy. Each step
first takes a gradient-ascent step on the difference loss J of a few meta prompts,
  θ' = θ + η ∇J(θ),   J = ``preference_strength.metarm_difference_loss``,
then an optimizer step on θ with the gradient of the Bradley–Terry loss at θ':
  exact (default):  ∇_θ L_BT(θ'(θ))  (through θ', second order; the paper's algorithm);
  first_order:      ∇L_BT evaluated at θ', applied to θ (the authors' issue replies).

What the meta set must be: responses from the policy the reward model will be used
against, i.e. the policy that RL (or best-of-n) against this reward model produces, whose
responses lie off the preference data's distribution. MetaRM's point is to keep the
reward model discriminating there; responses of the policy that generated the preference
pairs carry no shift to adapt to. For real data, pass such responses as ``metarm.responses``
(an .npz). On the synthetic task, the default ``metarm.policy="synthetic_best_of_n"``
stands in for an optimised policy: each meta response is the best, under the task's gold
reward, of ``metarm.best_of`` base-policy samples, so the meta set is shifted toward what
optimisation buys (higher gold: longer, more relevant, less harmful responses).
``policy="synthetic"`` samples the base policy itself (at ``temperature``, ``top_k``), for
comparison. Only the responses are used; their gold rewards never reach the loss.

Choices the paper leaves open, made here:
  * J is the mean over reward heads of each head's difference loss (one head: J itself),
    with the model run without dropout; the BT loss keeps its own dropout key.
  * Training metrics ("loss", "accuracy", "margin") are those of the BT loss at θ', the
    point the step differentiates; "meta_difference" is J(θ), "meta_grad_norm" ‖∇J(θ)‖.
  * The meta set is fixed for the run; each step reads ``prompts_per_step`` of its
    prompts (all k responses of each) in a seeded order, one order per separate ensemble
    member (``MetaBatches``), so that a resumed run reads the same.

η (``metarm.eta``, default 0.1) is open in the paper. ‖∇J‖ is of order 1 on the default
synthetic task, so η is about the length of the ascent step in parameter space; larger η
makes the early BT gradients larger and, well above 0.1, training diverges. An exact step
costs a second backward pass through the meta responses.

Meta batch keys: "meta_tokens" int32 [P, k, T] and "meta_mask" bool [P, k, T], prompt and
response joined and right-padded as the pairs are; [K, P, k, T] for stacked members.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rmjax.data.array_source import ArraySource
from rmjax.models import lora
from rmjax.models.sampler import SamplingConfig, generate
from rmjax.models.transformer import sequence_rewards
from rmjax.objectives.preference_strength import metarm_difference_loss
from rmjax.rm import members as ensemble
from rmjax.rm.step import batch_metrics, model_params
from rmjax.tasks import preference as synthetic

META_TOKENS = "meta_tokens"  # int32 [P, k, T]
META_MASK = "meta_mask"  # bool [P, k, T]
META_KEYS = (META_TOKENS, META_MASK)
POLICIES = ("synthetic_best_of_n", "synthetic")


def meta_rewards(model, tokens, mask) -> jax.Array:
  """float32 [P, k, H] rewards of the meta responses tokens/mask [P, k, T]."""
  p, k, t = tokens.shape
  rewards = sequence_rewards(model, tokens.reshape(p * k, t), mask.reshape(p * k, t))
  return rewards.reshape(p, k, -1)


def make_meta_objective(graphdef):
  """``J(params, tokens, mask) -> scalar``: the mean over heads of each head's difference
  loss on the meta responses [P, k, T]."""

  def objective(params, tokens, mask):
    rewards = meta_rewards(nnx.merge(graphdef, model_params(params)), tokens, mask)
    return jnp.mean(jax.vmap(metarm_difference_loss, in_axes=2)(rewards))

  return objective


def make_meta_update(graphdef, tx: optax.GradientTransformation, loss_fn, eta: float,
                     first_order: bool = False):
  """A MetaRM member update ``(params, opt_state, batch, key) -> (params, opt_state,
  metrics)``, signature as ``rm_step.make_member_update``'s.

  ``loss_fn``: ``rm_step.make_loss_fn``'s BT loss, given the batch without its meta keys.
  ``eta``: the ascent step η >= 0 on J (plain SGD, not the optimizer); with η = 0 the
  update is ``make_member_update``'s. ``first_order``: stop the gradient through ∇J, so
  the step applies ∇L_BT(θ') to θ.
  """
  if eta < 0:
    raise ValueError(f"metarm.eta={eta} must be >= 0 (θ' = θ + η ∇J is an ascent step)")
  objective = make_meta_objective(graphdef)

  def lookahead_loss(params, pairs, meta, key):
    meta_value, meta_grads = jax.value_and_grad(objective)(params, *meta)
    meta_grads = lora.frozen_zeroed(meta_grads)  # with LoRA the base stays frozen here too
    if first_order:
      meta_grads = jax.lax.stop_gradient(meta_grads)
    shifted = jax.tree.map(lambda p, g: p + eta * g, params, meta_grads)
    loss, aux = loss_fn(shifted, pairs, key)
    return loss, (aux, meta_value, optax.tree.norm(meta_grads))

  def update(params, opt_state, batch, key):
    pairs = {k: v for k, v in batch.items() if k not in META_KEYS}
    meta = (batch[META_TOKENS], batch[META_MASK])
    (_, (aux, meta_value, meta_norm)), grads = jax.value_and_grad(
        lookahead_loss, has_aux=True)(params, pairs, meta, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {**batch_metrics(aux), "grad_norm": lora.grad_norm(grads),
                               "meta_difference": meta_value, "meta_grad_norm": meta_norm}

  return update


# ----------------------------------------------------------------------------- meta set


@dataclasses.dataclass(frozen=True)
class MetaSet:
  tokens: np.ndarray  # int32 [P, k, T]
  mask: np.ndarray  # bool [P, k, T]


def check_config(mcfg, data_source: str, data_parallel: int) -> None:
  """Clear errors for a ``metarm`` config section (``rmjax/configs/train_rm.py``)."""
  problems = []
  if mcfg.eta < 0:
    problems.append(f"eta={mcfg.eta} must be >= 0")
  if mcfg.k < 2:
    problems.append(f"k={mcfg.k} must be >= 2 (J compares responses to the same prompt)")
  if mcfg.prompts_per_step < 1 or mcfg.prompts_per_step % data_parallel:
    problems.append(f"prompts_per_step={mcfg.prompts_per_step} must be a positive multiple "
                    f"of the data-parallel size {data_parallel}")
  if not mcfg.responses:
    if mcfg.policy not in POLICIES:
      problems.append(f"policy={mcfg.policy!r} is not one of {POLICIES} (or set responses "
                      "to a .npz meta set)")
    elif data_source != "synthetic":
      problems.append(f"policy={mcfg.policy!r} needs data.source='synthetic', not "
                      f"{data_source!r}; pass a precomputed meta set as responses=FILE.npz")
    if mcfg.num_prompts < mcfg.prompts_per_step:
      problems.append(f"num_prompts={mcfg.num_prompts} must be >= prompts_per_step="
                      f"{mcfg.prompts_per_step}")
    if mcfg.temperature <= 0 or mcfg.top_k < 0:
      problems.append(f"temperature={mcfg.temperature} must be > 0 and top_k={mcfg.top_k} "
                      ">= 0")
    if mcfg.policy == "synthetic_best_of_n" and mcfg.get("best_of", 1) < 2:
      problems.append(f"best_of={mcfg.get('best_of')} must be >= 2 for policy="
                      "'synthetic_best_of_n' (best_of=1 is the base policy: policy='synthetic')")
  if problems:
    raise ValueError("invalid metarm config: " + "; ".join(problems))


def synthetic_train_prompts(scfg: synthetic.SyntheticConfig, n: int):
  """The first ``n`` prompts of ``synthetic.make_split(scfg, "train")`` (drawn the same
  way, without sampling its responses): tokens [n, max_prompt_len] int32, lengths [n]."""
  if n > scfg.num_train_pairs:
    raise ValueError(f"metarm.num_prompts={n} exceeds the synthetic train split's "
                     f"{scfg.num_train_pairs} prompts")
  # make_split's prompt key for "train" (a test checks that the prompts agree).
  key = jax.random.split(jax.random.fold_in(jax.random.key(scfg.seed), 1), 4)[0]
  tokens, lengths = synthetic.build_task(scfg).sample_prompts(key, scfg.num_train_pairs)
  return tokens[:n], lengths[:n]


def sample_meta_set(policy, prompts, prompt_len, k: int, sampling: SamplingConfig,
                    key) -> MetaSet:
  """k responses of ``policy`` to each right-padded prompt [P, S] (lengths [P]), joined
  with their prompt and right-padded: MetaSet of [P, k, S + sampling.max_new_tokens]."""
  p, width = prompts.shape
  rows = np.repeat(np.asarray(prompts), k, axis=0)
  mask = np.arange(width)[None] < np.repeat(np.asarray(prompt_len), k)[:, None]
  tokens, mask = (np.asarray(x) for x in generate(policy, rows, mask, key, sampling).sequences())
  order = np.argsort(~mask, axis=1, kind="stable")  # the sampler left-packs the prompt
  tokens, mask = np.take_along_axis(tokens, order, 1), np.take_along_axis(mask, order, 1)
  return MetaSet(tokens.reshape(p, k, -1).astype(np.int32), mask.reshape(p, k, -1))


def best_of_n_meta_set(task: synthetic.SyntheticTask, prompts, prompt_len, k: int, n: int,
                       key) -> MetaSet:
  """k responses to each right-padded prompt [P, S] (lengths [P]), each the best under the
  task's gold total of n base-policy samples (the task's own sampling): k draws of the
  best-of-n policy per prompt. MetaSet of [P, k, S + max_response_len]."""
  p = len(prompt_len)
  rows = np.repeat(np.asarray(prompts), k * n, axis=0)
  lengths = np.repeat(np.asarray(prompt_len), k * n)
  tokens, mask = task.sample_responses(key, rows, lengths)  # right-padded, joined
  gold = task.score(tokens, mask, lengths)["total"].reshape(p, k, n)
  best = np.argmax(gold, axis=2)[..., None, None]  # [P, k, 1, 1]
  pick = lambda x: np.take_along_axis(x.reshape(p, k, n, -1), best, 2)[:, :, 0]
  return MetaSet(pick(tokens).astype(np.int32), pick(mask))


def synthetic_meta_set(mcfg, scfg: synthetic.SyntheticConfig, seed: int) -> MetaSet:
  """``mcfg.k`` responses to each of the first ``mcfg.num_prompts`` synthetic training
  prompts, drawn from ``seed``: of the best-of-``mcfg.best_of`` policy under the gold
  reward (``policy="synthetic_best_of_n"``), or of the base policy itself at
  ``mcfg.temperature``, ``mcfg.top_k`` (``policy="synthetic"``)."""
  prompts, lengths = synthetic_train_prompts(scfg, mcfg.num_prompts)
  if mcfg.policy == "synthetic_best_of_n":
    key = jax.random.fold_in(jax.random.key(seed), 0x3E7B)
    return best_of_n_meta_set(synthetic.build_task(scfg), prompts, lengths, mcfg.k,
                              mcfg.best_of, key)
  sampling = SamplingConfig(max_new_tokens=scfg.max_response_len, temperature=mcfg.temperature,
                            top_k=mcfg.top_k, eos_id=synthetic.EOS, pad_id=synthetic.PAD)
  key = jax.random.fold_in(jax.random.key(seed), 0x3E7A)
  return sample_meta_set(synthetic.build_task(scfg).policy, prompts, lengths, mcfg.k,
                         sampling, key)


def load_meta_set(path: str, k: int, vocab_size: int) -> MetaSet:
  """A precomputed meta set: an .npz with "tokens" (integer) and "mask" (bool) [P, k, T],
  prompt and response joined, right-padded; every row needs a real token."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"metarm.responses={path}: no such file")
  with np.load(path) as f:
    missing = [name for name in ("tokens", "mask") if name not in f.files]
    if missing:
      raise ValueError(f"{path}: missing field(s) {missing}; a meta set holds 'tokens' and "
                       f"'mask' [P, k, T] (has {sorted(f.files)})")
    tokens, mask = f["tokens"], f["mask"]
  where = lambda field: f"{path}: field {field!r}"
  if tokens.ndim != 3 or tokens.shape[1] != k:
    raise ValueError(f"{where('tokens')} has shape {tokens.shape}; expected [P, k={k}, T]")
  if mask.shape != tokens.shape:
    raise ValueError(f"{where('mask')} has shape {mask.shape}, 'tokens' {tokens.shape}")
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"{where('tokens')} has dtype {tokens.dtype}; expected integer ids")
  if mask.dtype != bool:
    raise ValueError(f"{where('mask')} has dtype {mask.dtype}; expected bool")
  if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
    raise ValueError(f"{where('tokens')} has ids in [{tokens.min()}, {tokens.max()}], "
                     f"outside the vocabulary [0, {vocab_size})")
  if not mask.any(axis=2).all():
    raise ValueError(f"{where('mask')} has rows without a real token")
  if (mask[..., 1:] & ~mask[..., :-1]).any():
    raise ValueError(f"{where('mask')} is not right-padded (a real token after padding)")
  return MetaSet(tokens.astype(np.int32), mask)


def build_meta_set(config, vocab_size: int) -> MetaSet:
  """The run's meta set: ``metarm.responses`` (an .npz) when set, else sampled from
  ``metarm.policy`` ("synthetic_best_of_n": the synthetic task's base policy after
  best-of-``best_of`` selection by its gold reward; "synthetic": the base policy itself)
  from ``config.seed``."""
  mcfg = config.metarm
  if mcfg.responses:
    return load_meta_set(mcfg.responses, mcfg.k, vocab_size)
  scfg = synthetic.from_fields(config.data.synthetic.to_dict())
  return synthetic_meta_set(mcfg, scfg, config.seed)


def attach(data, config, layout: ensemble.Layout, data_parallel: int):
  """``data`` (``rm_data.RMData``) whose train batches also carry the meta responses
  (``MetaBatches``; separate members each in the order of its seed), after checking
  ``config.metarm``."""
  check_config(config.metarm, config.data.source, data_parallel)
  meta = build_meta_set(config, data.vocab_size)
  seeds = ensemble.member_seeds(config.seed, layout.k) if layout.stacked else [config.seed]
  train = MetaBatches(data.train, meta, config.metarm.prompts_per_step, seeds, layout.stacked)
  return dataclasses.replace(data, train=train)


class MetaBatches:
  """A source's batches plus ``prompts_per_step`` meta prompts' responses at each step:
  "meta_tokens"/"meta_mask" [P, k, T], or [K, P, k, T] stacked over separate members
  (member m in the seeded order of ``seeds[m]``). A pure function of the step."""

  def __init__(self, source, meta: MetaSet, prompts_per_step: int, seeds: list[int],
               stacked: bool):
    arrays = {META_TOKENS: meta.tokens, META_MASK: meta.mask}
    self.source, self.stacked = source, stacked
    self.meta = [ArraySource(arrays, prompts_per_step, seed) for seed in seeds]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    parts = [meta.batch(step) for meta in self.meta]
    extra = ({k: np.stack([p[k] for p in parts]) for k in META_KEYS} if self.stacked
             else parts[0])
    return {**self.source.batch(step), **extra}
