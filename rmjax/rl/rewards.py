"""PPO's score pipeline: reward models → ensemble objective → transform → normalise → clip.

One order, as ``shared/papers/algorithms.md`` §5 fixes it. Each of J reward models is a
scorer ``(tokens, mask) -> [B, K]`` member rewards (``load_rm.load_ensemble``); its members
are reduced by the ensemble objective (``rmjax.objectives.ensemble.combine``) to [B]. The
transform then makes one score per episode from the J columns: "none" sums them, "lsc"
sums log σ(r_j − r_j^ref(x)) (the LSC transform, and for J > 1 the AND-combination of
``rmjax.objectives.transforms``), r^ref(x) being the per-prompt quantile of the reward of
reference-policy samples for the same prompt. Last, running normalisation (Welford moments
updated with the batch first, as trlx does) and clipping to ±clip.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from rmjax.objectives import ensemble as objectives
from rmjax.objectives import running_stats, transforms
from rmjax.parallel.sharding import to_host

TRANSFORMS = ("none", "lsc")


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
  objective: str = "mean"
  uwo_lam: float = 0.5
  transform: str = "none"
  lsc_quantile: float = 0.85
  normalize: bool = True
  clip: float = 0.8  # 0: no clipping

  def __post_init__(self):
    if self.objective not in objectives.OBJECTIVES:
      raise ValueError(f"reward.objective={self.objective!r} is not one of "
                       f"{sorted(objectives.OBJECTIVES)}")
    if self.transform not in TRANSFORMS:
      raise ValueError(f"reward.transform={self.transform!r} is not one of {TRANSFORMS}")
    if self.clip < 0:
      raise ValueError(f"reward.clip={self.clip} must be >= 0 (0: no clipping)")

  @classmethod
  def from_config(cls, cfg) -> ScoreConfig:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in cfg.items() if k in names})


def member_scores(scorers, tokens, mask) -> list[np.ndarray]:
  """Every reward model's member rewards [B, K_j] (numpy) of right-padded sequences."""
  return [to_host(scorer(tokens, mask)) for scorer in scorers]


def objective_scores(members: list[np.ndarray], cfg: ScoreConfig) -> np.ndarray:
  """[B, J]: each reward model's members reduced by the ensemble objective."""
  kwargs = {"lam": cfg.uwo_lam} if cfg.objective in ("uwo", "brme") else {}
  return np.stack([np.asarray(objectives.combine(m, cfg.objective, **kwargs))
                   for m in members], axis=-1)


def reference_levels(ref_scores: np.ndarray, cfg: ScoreConfig) -> np.ndarray:
  """r^ref [P, J] from the objective scores [P, S, J] of S reference samples per prompt."""
  return np.asarray(transforms.reference_quantile(np.moveaxis(ref_scores, 1, -1),
                                                  cfg.lsc_quantile))


def transform(scores: np.ndarray, r_ref: np.ndarray | None, cfg: ScoreConfig) -> np.ndarray:
  """[B, J] objective scores (and [B, J] reference levels for "lsc") -> [B]."""
  if cfg.transform == "lsc":
    return np.asarray(transforms.and_combine(scores, r_ref))
  return scores.sum(-1)


def normalize(scores: np.ndarray, moments, cfg: ScoreConfig):
  """(processed [B], updated moments): running normalisation then clipping."""
  clip = cfg.clip or None
  if not cfg.normalize:
    return np.asarray(scores if clip is None else np.clip(scores, -clip, clip)), moments
  moments = running_stats.update_moments(moments, jnp.asarray(scores))
  return np.asarray(running_stats.normalize_and_clip(scores, moments, clip)), moments
