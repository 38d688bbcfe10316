"""Reward-model ensembles: K members trained and scored as one compiled program.

Two layouts (``Layout``), both chosen by the run config's ``ensemble`` section:

* **Separate members** (``k > 1``): K full reward models. Their parameters, and their
  optimizer states, are stacked on a leading axis named "ensemble" (a logical axis that
  ``rmjax/parallel/rules.py`` maps to the mesh's ``ensemble`` axis), and the train step
  maps one member's update over it (``over_members``: vmapped, or one member after
  another in the same program). Members share the data but differ by seed
  (Coste et al. 2023; ``algorithms.md`` §3): member m is exactly the model that a
  single-model run with seed ``member_seeds(seed, k)[m]`` trains: the same
  initialisation of backbone and head and the same data order.
* **Shared backbone** (``shared_backbone``): one backbone with K reward heads
  (``ModelConfig.num_reward_heads = K``), nearly the cost of one model. The heads differ
  by initialisation (independent columns of one head matrix) and, with ``bootstrap``
  (the default), by data: each head weighs every pair of the shared batch by its own
  Poisson(1) draw (an online bootstrap, ``rm_data.HeadBootstrap``). Why not the same
  batch for every head: for fixed features a head is a logistic regression, a convex
  problem with one optimum, so heads trained on identical data converge towards the same
  head and the ensemble's spread, the very signal the conservative objectives use,
  fades. Why not per-head batches: that would need a backbone pass per head, which is
  the cost this layout exists to avoid.

``k = 1`` is today's single reward model, trained by the same code path.

**Gaussian heads** (``gaussian``, either layout and k = 1): each member predicts a mean and
a log-std of its reward instead of one number (BRME, Yan et al. 2024; ``algorithms.md`` §3),
so each model has two reward-head columns per member, the members' means first, then their
log-stds (``Layout.columns``, ``split_columns``). The means are the member rewards every
consumer reads; the stds (``objectives.gaussian.std``) come beside them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rmjax import parallel
from rmjax.models.transformer import sequence_rewards
from rmjax.objectives import gaussian as gaussian_lib

AXIS = "ensemble"  # the logical name of the member axis of stacked parameters
VECTORIZE = ("auto", "vmap", "map")


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a run's K reward members are held; ``k = 1`` is a single model."""

  k: int = 1
  shared_backbone: bool = False
  bootstrap: bool = True  # shared backbone only: per-head Poisson(1) pair weights
  # How separate members run inside the one program: "vmap" (batched together), "map"
  # (one after another, ``lax.map``) or "auto" (see ``over_members``).
  vectorize: str = "auto"
  # Separate members only: 0 = every member trains on every pair; F >= 2 = the pairs are
  # split into F folds and member m never sees fold m % F, so that every pair has members
  # that can score it out of fold (``rmjax score-pairs``, ``rmjax.rm.strength``).
  folds: int = 0
  # Each member predicts a Gaussian N(mean, std²) of the reward: two head columns each.
  gaussian: bool = False

  def __post_init__(self):
    if not isinstance(self.k, int) or self.k < 1:
      raise ValueError(f"ensemble.k={self.k!r} must be an integer >= 1")
    if self.vectorize not in VECTORIZE:
      raise ValueError(f"ensemble.vectorize={self.vectorize!r} is not one of {VECTORIZE}")
    if self.folds and not (self.stacked and 2 <= self.folds <= self.k):
      raise ValueError(f"ensemble.folds={self.folds} needs separate members "
                       f"(shared_backbone=False) and 2 <= folds <= k={self.k}, so that "
                       "every fold is held out by some member; 0 turns folds off")

  @classmethod
  def from_config(cls, cfg) -> Layout:
    """From a run config's ``ensemble`` section (None or absent fields: defaults)."""
    cfg = dict(cfg or {})
    unknown = set(cfg) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"ensemble has unknown fields {sorted(unknown)}")
    return cls(**cfg)

  @property
  def stacked(self) -> bool:
    """Whether members are full models stacked on a leading axis."""
    return self.k > 1 and not self.shared_backbone

  @property
  def heads(self) -> int:
    """Reward heads of each model: K for a shared backbone, else 1."""
    return self.k if self.shared_backbone else 1

  @property
  def columns(self) -> int:
    """Reward-head outputs of each model: ``heads``, twice that with Gaussian heads."""
    return self.heads * (2 if self.gaussian else 1)


SINGLE = Layout()  # one model, one head: the default of every builder and step


def member_seeds(seed: int, k: int) -> list[int]:
  """The seed of each member: ``seed`` itself for member 0 (so k = 1 is the single
  model), then 31-bit seeds mixed from (seed, m). Mixed rather than ``seed + m`` so
  that ensembles of different seeds share no member (seed 0 and seed 1 would share
  K - 1 of them)."""
  mixed = [int(np.random.SeedSequence([seed, m]).generate_state(1)[0]) & 0x7FFFFFFF
           for m in range(1, k)]
  return [seed, *mixed]


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def with_member_axis(state):
  """``state`` whose arrays gained a leading member dimension: name it "ensemble" in
  every Variable's logical ``axes`` so that it is sharded like the rest."""
  def one(v):
    axes = v.get_metadata().get("axes")
    return v if axes is None else v.replace(v.get_value(), axes=(AXIS, *axes))
  return jax.tree.map(one, state, is_leaf=_is_variable)


def stack_states(states: list):
  """One ``nnx.State`` per member (equal structure) -> the stacked state (host arrays)."""
  stacked = jax.tree.map(lambda *vs: vs[0].replace(np.stack([np.asarray(v.get_value())
                                                              for v in vs])),
                         *states, is_leaf=_is_variable)
  return with_member_axis(stacked)


def _stacked_init(make_member):
  """(graphdef, init): ``init(seeds int32 [K])`` -> the stacked state of
  ``make_member(rngs)``, one member per seed."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: make_member(nnx.Rngs(0))))

  def init(seed_array):
    one = lambda seed: nnx.split(make_member(nnx.Rngs(jax.random.key(seed))))[1]
    return with_member_axis(jax.vmap(one)(seed_array))

  return graphdef, init


def init_stacked(make_member, seeds: list[int], mesh):
  """(graphdef, stacked parameters) of ``make_member(rngs)`` for each seed.

  Built in one jitted ``vmap`` straight into the shardings of ``mesh`` (members over
  its ``ensemble`` axis); member m is bit-identical to ``make_member(nnx.Rngs(seeds[m]))``.
  """
  graphdef, init = _stacked_init(make_member)
  seed_array = jnp.asarray(seeds, jnp.int32)
  shardings = parallel.tree_shardings(jax.eval_shape(init, seed_array), mesh)
  return graphdef, jax.jit(init, out_shardings=shardings)(seed_array)


def abstract_stacked(make_member, k: int):
  """(graphdef, stacked state of ShapeDtypeStructs) of K members, nothing allocated:
  the target a checkpoint of stacked members restores into."""
  graphdef, init = _stacked_init(make_member)
  return graphdef, jax.eval_shape(init, jax.ShapeDtypeStruct((k,), jnp.int32))


def over_members(fn, layout: Layout, member_devices: int = 1):
  """``fn`` applied along the leading member axis of all its arguments (and outputs).

  "vmap" batches the members; "map" runs them one after another inside the same
  program (``lax.map``). "auto" picks "map" on a CPU backend when the members are not
  spread over devices (``member_devices`` = the mesh's ensemble axis), else "vmap". Why:
  XLA:CPU runs the batched matmuls of a vmapped member axis slower than the same
  matmuls one member at a time (``benchmarks/ensemble.py``; figures in
  ``benchmarks/README.md``), while an accelerator is better filled by the batch, and
  members sharded over devices must be vmapped so that each device runs its own.
  """
  mode = layout.vectorize
  if mode == "auto":
    mode = "map" if jax.default_backend() == "cpu" and member_devices == 1 else "vmap"
  if mode == "vmap":
    return jax.vmap(fn)
  return lambda *args: jax.lax.map(lambda member_args: fn(*member_args), args)


def apply_members(layout: Layout, graphdef, params, fn, member_devices: int = 1):
  """``fn(model)`` -> pytree of per-head arrays [B, heads], as [B, K] for every layout.

  Stacked members are mapped over (``over_members``; each has one head); otherwise the
  one model's heads are the members.
  """
  if not layout.stacked:
    return fn(nnx.merge(graphdef, params))
  out = over_members(lambda p: fn(nnx.merge(graphdef, p)), layout, member_devices)(params)
  return jax.tree.map(lambda x: jnp.moveaxis(x[..., 0], 0, -1), out)


def split_columns(scores, gaussian: bool):
  """A model's reward-head outputs [..., columns] -> (member rewards [..., heads], log-stds
  [..., heads]; None for scalar heads, whose columns are the rewards)."""
  if not gaussian:
    return scores, None
  heads = scores.shape[-1] // 2
  return scores[..., :heads], scores[..., heads:]


def head_outputs(layout: Layout, scores) -> dict:
  """{"reward": [..., heads]} of a model's reward-head outputs [..., columns], with
  "std" [..., heads] beside it for Gaussian heads (``objectives.gaussian.std``)."""
  means, log_stds = split_columns(scores, layout.gaussian)
  if log_stds is None:
    return {"reward": means}
  return {"reward": means, "std": gaussian_lib.std(log_stds)}


def member_outputs(layout: Layout, graphdef, params, tokens, mask) -> dict:
  """{"reward": float32 [B, K] member rewards (Gaussian heads: their means)} of sequences
  tokens/mask [B, seq], with "std" [B, K] for Gaussian heads."""
  return apply_members(layout, graphdef, params, lambda model: head_outputs(
      layout, sequence_rewards(model, tokens, mask)))


class RewardEnsemble:
  """A trained reward model or ensemble as a scorer: ``self(tokens, mask) -> [B, K]``
  float32 member rewards (K = 1 for a single model), jitted once per input shape. With
  Gaussian heads (``has_stds``) these are the predicted means, and ``with_stds`` gives
  the predicted stds beside them from the same pass.

  ``cfg``: the ModelConfig of one member (vocabulary, ``max_seq_len``); ``params``:
  the parameters as trained (stacked for separate members).
  """

  def __init__(self, graphdef, params, layout: Layout, cfg):
    self.graphdef, self.params, self.layout, self.cfg = graphdef, params, layout, cfg
    self._score = jax.jit(lambda params, tokens, mask: member_outputs(
        layout, graphdef, params, tokens, mask))

  @property
  def k(self) -> int:
    return self.layout.k

  @property
  def has_stds(self) -> bool:
    return self.layout.gaussian

  def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    return self._score(self.params, tokens, mask)["reward"]

  def with_stds(self, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(means [B, K], predicted stds [B, K]) of a model with Gaussian heads."""
    if not self.has_stds:
      raise ValueError("this reward model has scalar heads (ensemble.gaussian=False): it "
                       "predicts no std")
    out = self._score(self.params, tokens, mask)
    return out["reward"], out["std"]
