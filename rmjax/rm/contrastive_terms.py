"""Contrastive auxiliary losses as train-step hooks (issue #5 item 2).

``make_aux_loss(cfg)`` turns a run's ``loss.contrastive`` section into the hook that
``rm_step.make_loss_fn`` adds to the Bradley–Terry loss:
``aux(model, params, batch, key, h_chosen, h_rejected) -> (β·L_cl, {"contrastive_loss": L_cl})``,
where ``params`` are the term's own parameters (``rm_step.loss_params``: SwAV's
prototypes, else none), h_chosen, h_rejected [B, D] are the final hidden states the reward
head read in the BT pass and ``key`` is independent of that pass's dropout key. The math is in
``rmjax.objectives.contrastive``; equations in ``docs/algorithms.md`` §2
("Contrastive auxiliary loss") and §6 ("Goal-conditioned contrastive RM").

Kinds:
* "simcse": view 1 is the BT pass, view 2 a second pass with an independent dropout key;
  L_cl = InfoNCE(view 1 → view 2, τ), one-sided as in SimCSE (view 1's rows are the
  anchors). Items are the difference view h_c − h_r (and its mirror) or the pair view.
* "swav": the same two views scored against K learned prototypes [D, K]. They are the
  loss's parameters, not the model's (``init_prototypes``): the train state's params are
  then ``{"model": ..., "prototypes": ...}`` (``rmjax.rm.build``), so the prototypes are
  trained, sharded, checkpointed and stacked per ensemble member like the model, and a
  scorer loads the model alone. Items and prototypes are L2-normalised inside the loss, so
  scores are cosines, instead of renormalising the prototypes after each update as SwAV
  does.
* "goal" (Nath et al. 2024): a source state h_s read at a random position of the chosen
  response (before its last token) is pulled toward the chosen final state h_c and pushed
  away from the rejected final state h_r:
  L_cl = −log mean σ(cos(h_s, h_c)) − log(1 − mean σ(cos(h_s, h_r))), i.e. §6's loss with
  h_s⁺ = h_s′ = h_s, h_g⁺ = h_c and h_g⁻ = h_r: states of the preferred trajectory are
  drawn toward its outcome and away from the dispreferred one. h_s comes from a second
  pass (the hook sees only the BT pass's final states), which runs without dropout unless
  the model has some (this kind adds none).

Config values of −1 (``beta``, ``temperature``, ``prototypes``) stand for the paper's value
of the kind and view (``PAPER_BETA``, ``PAPER_TEMPERATURE``, ``PAPER_PROTOTYPES``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from rmjax.data import schema, shared_prompt
from rmjax.models.layers import param
from rmjax.models.transformer import last_token_index
from rmjax.objectives import contrastive
from rmjax.rm import members as ensemble
from rmjax.rm import step as rm_step

KINDS = ("none", "simcse", "swav", "goal")
VIEWS = {"difference": contrastive.difference_views, "pair": contrastive.pair_views}
DROPOUT_KINDS = ("simcse", "swav")  # kinds whose two views differ by dropout
PAPER = -1  # a config value meaning "the paper's value"
# §2: SimCSE β = 1 (either view); SwAV β = 0.5 with K = 20 (difference view), β = 0.1 with
# K = 50 (pair view); §6: goal-conditioned β = 0.5. τ: SimCSE's usual 0.05 (§2 leaves it
# open), SwAV's 0.1.
PAPER_BETA = {"simcse": {"difference": 1.0, "pair": 1.0}, "swav": {"difference": 0.5, "pair": 0.1},
              "goal": {"difference": 0.5, "pair": 0.5}}
PAPER_TEMPERATURE = {"simcse": 0.05, "swav": 0.1}
PAPER_PROTOTYPES = {"difference": 20, "pair": 50}
_NORM_EPS = 1e-8  # norm floor for cosines (a zero difference row stays finite)
PROTOTYPES = "prototypes"  # the name of SwAV's prototypes among a run's params
PROTOTYPE_AXES = ("embed", PROTOTYPES)  # logical axes of the [D, K] prototypes
_PROTOTYPE_STREAM = 0x5EED  # folded into a member's seed: prototypes draw apart from the model


@dataclasses.dataclass(frozen=True)
class Options:
  """A ``loss.contrastive`` section; ``resolve`` validates it and fills in the −1s."""

  kind: str = "none"
  view: str = "difference"
  beta: float = PAPER
  temperature: float = PAPER
  dropout: float = 0.05
  prototypes: int = PAPER
  sinkhorn_epsilon: float = 0.05
  sinkhorn_iterations: int = 3


def resolve(cfg) -> Options:
  """Validated options of a ``loss.contrastive`` section (None: kind "none"), with every
  −1 replaced by the paper's value; ValueError naming the field otherwise."""
  fields = dict(cfg or {})
  unknown = set(fields) - {f.name for f in dataclasses.fields(Options)}
  if unknown:
    raise ValueError(f"loss.contrastive has unknown fields {sorted(unknown)}")
  o = Options(**fields)
  _check(o)
  if o.kind == "none":
    return o
  return dataclasses.replace(
      o, beta=PAPER_BETA[o.kind][o.view] if o.beta == PAPER else o.beta,
      temperature=(PAPER_TEMPERATURE.get(o.kind, PAPER) if o.temperature == PAPER
                   else o.temperature),
      prototypes=PAPER_PROTOTYPES[o.view] if o.prototypes == PAPER else o.prototypes)


def _check(o: Options) -> None:
  problems = []
  if o.kind not in KINDS:
    problems.append(f"kind={o.kind!r} is not one of {KINDS}")
  if o.view not in VIEWS:
    problems.append(f"view={o.view!r} is not one of {tuple(VIEWS)}")
  if o.beta < 0 and o.beta != PAPER:
    problems.append(f"beta={o.beta} must be >= 0 (or -1: the paper's value)")
  if o.temperature <= 0 and o.temperature != PAPER:
    problems.append(f"temperature={o.temperature} must be > 0 (or -1: the paper's value)")
  if not 0.0 <= o.dropout < 1.0:
    problems.append(f"dropout={o.dropout} must be in [0, 1)")
  if not isinstance(o.prototypes, int) or (o.prototypes < 1 and o.prototypes != PAPER):
    problems.append(f"prototypes={o.prototypes!r} must be an int >= 1 (or -1: the paper's "
                    "value)")
  if o.sinkhorn_epsilon <= 0:
    problems.append(f"sinkhorn_epsilon={o.sinkhorn_epsilon} must be > 0")
  if not isinstance(o.sinkhorn_iterations, int) or o.sinkhorn_iterations < 1:
    problems.append(f"sinkhorn_iterations={o.sinkhorn_iterations!r} must be an int >= 1")
  if problems:
    raise ValueError("loss.contrastive: " + "; ".join(problems))


def model_fields(cfg) -> dict:
  """ModelConfig fields that a ``loss.contrastive`` section's kind needs on top of the
  model config: ``dropout_rate`` for the dropout views."""
  o = resolve(cfg)
  return {"dropout_rate": o.dropout} if o.kind in DROPOUT_KINDS else {}


def prototype_count(o: Options) -> int:
  """K, the prototypes a resolved section's loss holds (swav), else 0."""
  return o.prototypes if o.kind == "swav" else 0


def init_prototypes(seeds: list[int], d_model: int, k: int, dtype,
                    stacked: bool = False) -> nnx.Param:
  """SwAV's prototypes [D, K] (truncated normal, std 1/√D) as an ``nnx.Param`` with
  logical axes, drawn from ``seeds[0]``; ``stacked``: [len(seeds), D, K], member m from
  ``seeds[m]``, its member axis named like stacked model parameters. Jit-traceable."""
  def one(seed):
    key = jax.random.fold_in(jax.random.key(seed), _PROTOTYPE_STREAM)
    return param(nnx.Rngs(key), (d_model, k), PROTOTYPE_AXES, dtype, d_model ** -0.5)
  if not stacked:
    return one(seeds[0])
  return ensemble.with_member_axis(jax.vmap(one)(jnp.asarray(seeds, jnp.int32)))


def make_aux_loss(cfg):
  """The ``make_loss_fn`` hook of a ``loss.contrastive`` section (or its resolved
  ``Options``), or None for "none"."""
  o = cfg if isinstance(cfg, Options) else resolve(cfg)
  makers = {"simcse": _simcse, "swav": _swav, "goal": _goal}
  return makers[o.kind](o) if o.kind in makers else None


def _second_view(model, batch, key, views):
  """The items of a second dropout pass: ``views`` of its (h_chosen, h_rejected)."""
  return views(*rm_step.pair_hidden(model, batch, key))


def _simcse(o: Options):

  def aux(model, params, batch, key, h_chosen, h_rejected):
    views = VIEWS[o.view]
    loss = contrastive.info_nce(views(h_chosen, h_rejected),
                                _second_view(model, batch, key, views), o.temperature)
    return o.beta * loss, {"contrastive_loss": loss}

  return aux


def unit(x: jax.Array, axis: int) -> jax.Array:
  """``x`` in float32 scaled to unit L2 norm along ``axis`` (norms floored at 1e-8)."""
  x = x.astype(jnp.float32)
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, _NORM_EPS ** 2))


def prototype_scores(items: jax.Array, prototypes: jax.Array) -> jax.Array:
  """Cosines [N, K] of items [N, D] with the prototype columns of [D, K]."""
  return unit(items, -1) @ unit(prototypes, 0)


def _swav(o: Options):

  def aux(model, params, batch, key, h_chosen, h_rejected):
    if PROTOTYPES not in params:
      raise ValueError("loss.contrastive.kind='swav' needs its prototypes among the params "
                       "(params = {'model': ..., 'prototypes': init_prototypes(...)})")
    views, prototypes = VIEWS[o.view], params[PROTOTYPES][...]
    scores_1 = prototype_scores(views(h_chosen, h_rejected), prototypes)
    scores_2 = prototype_scores(_second_view(model, batch, key, views), prototypes)
    loss = contrastive.swav_loss(scores_1, scores_2, o.temperature, o.sinkhorn_epsilon,
                                 o.sinkhorn_iterations)
    return o.beta * loss, {"contrastive_loss": loss}

  return aux


def goal_source_index(batch, key) -> jax.Array:
  """int32 [B]: per pair, a uniformly drawn position of the chosen response before its
  last token (the last token itself when the response has only one).

  Packed batches: an index into the packed row (the chosen segment). Plain batches: an
  index into the chosen row; the response is the real tokens after the first
  "prompt_len" [B] of them (left or right padding).
  """
  if "packed_tokens" in batch:
    response = batch["packed_segments"] == shared_prompt.CHOSEN
    last = batch["chosen_last"]
  else:
    if "prompt_len" not in batch:
      raise ValueError("loss.contrastive.kind='goal' needs plain batches with 'prompt_len' "
                       "[B] to find the chosen response")
    mask = batch[schema.CHOSEN_MASK].astype(bool)
    response = mask & (jnp.cumsum(mask, axis=1) > batch["prompt_len"][:, None])
    last = last_token_index(mask)
  candidates = response & (jnp.arange(response.shape[1]) < last[:, None])
  count = jnp.sum(candidates, axis=1)
  draw = jnp.floor(jax.random.uniform(key, count.shape) * count).astype(jnp.int32)
  rank = jnp.cumsum(candidates, axis=1) - 1
  hit = candidates & (rank == jnp.minimum(draw, count - 1)[:, None])
  return jnp.where(count > 0, jnp.argmax(hit, axis=1), last).astype(jnp.int32)


def _goal(o: Options):

  def aux(model, params, batch, key, h_chosen, h_rejected):
    draw_key, dropout_key = jax.random.split(key)
    index = goal_source_index(batch, draw_key)
    _, _, h_source = rm_step.pair_hidden(model, batch, dropout_key, chosen_extra=index)
    loss = contrastive.goal_conditioned_loss(h_source, h_chosen, h_source, h_rejected)
    return o.beta * loss, {"contrastive_loss": loss}

  return aux
