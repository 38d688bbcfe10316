"""PPO's score pipeline: reward sources → per-member normalisation → ensemble objective →
transform → running normalisation → clip.

One order, as ``docs/algorithms.md`` §5 fixes it (§3 for the normalisation). Each of J
reward sources (``rmjax.rm.reward_source``) gives [B, K_j] member rewards. Every member is
first normalised to zero mean and unit std with statistics measured once on samples of
the initial policy (``member_stats``; Coste et al.), so that members on different scales
weigh alike in WCO's min and UWO's variance; the statistics are part of a run's
checkpointed state. Each source's members are then reduced by the ensemble objective
(``rmjax.objectives.ensemble.combine``, one parameter per objective) to [B]. The
transform makes one score per episode from the J columns: "none" sums them (weighted by
``reward.weights`` when given), "lsc" sums
log σ(r_j − r_j^ref(x)) (the LSC transform, and for J > 1 the AND-combination of
``rmjax.objectives.transforms``), r^ref(x) being the per-prompt quantile of the reward of
reference-policy samples for the same prompt. Then, with ``reward.calibration="ppo_c"``,
PPO-C's calibrated reward from the confidence each response states (``calibrate``). Last,
running normalisation (Welford moments
updated with the batch first, as trlx does) and clipping to ±clip.

PPO, best-of-n and the experiments all score through ``member_stats``,
``normalize_members`` and ``objective_scores``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from rmjax.objectives import ensemble as objectives
from rmjax.objectives import running_stats, transforms
from rmjax.parallel.sharding import to_host

TRANSFORMS = ("none", "lsc")
CALIBRATIONS = ("none", "ppo_c")


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
  objective: str = "mean"
  uwo_lam: float = objectives.UWO_LAM_PPO  # UWO's λ (Coste et al.'s PPO value)
  brme_lam: float = objectives.BRME_LAM  # BRME's λ (open in Yan et al.)
  member_norm: bool = True  # per-member normalisation on initial-policy samples
  transform: str = "none"
  weights: tuple = ()  # "none": the weight of each source in the sum; () = all 1
  lsc_quantile: float = 0.85
  normalize: bool = True
  clip: float = 0.8  # 0: no clipping
  calibration: str = "none"  # "ppo_c": r + w (r - EMA r) (c - 0.5) before normalising
  calibration_w: float = 2.0  # PPO-C's w (Leng et al.)
  calibration_alpha: float = 0.1  # PPO-C's EMA weight of each batch

  def __post_init__(self):
    if self.objective not in objectives.OBJECTIVES:
      raise ValueError(f"reward.objective={self.objective!r} is not one of "
                       f"{sorted(objectives.OBJECTIVES)}")
    if self.transform not in TRANSFORMS:
      raise ValueError(f"reward.transform={self.transform!r} is not one of {TRANSFORMS}")
    if self.clip < 0:
      raise ValueError(f"reward.clip={self.clip} must be >= 0 (0: no clipping)")
    if self.uwo_lam < 0:
      raise ValueError(f"reward.uwo_lam={self.uwo_lam} must be >= 0")
    if not 0 <= self.brme_lam <= 1:
      raise ValueError(f"reward.brme_lam={self.brme_lam} must be in [0, 1]")
    if self.calibration not in CALIBRATIONS:
      raise ValueError(f"reward.calibration={self.calibration!r} is not one of "
                       f"{CALIBRATIONS}")
    if not 0 < self.calibration_alpha <= 1:
      raise ValueError(f"reward.calibration_alpha={self.calibration_alpha} must be in (0, 1]")
    if self.weights and self.transform != "none":
      raise ValueError(f"reward.weights weigh the sum of transform 'none', not "
                       f"{self.transform!r}")

  @classmethod
  def from_config(cls, cfg) -> ScoreConfig:
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in cfg.items() if k in names}
    if "weights" in fields:
      fields["weights"] = tuple(float(w) for w in fields["weights"])
    return cls(**fields)

  @property
  def objective_kwargs(self) -> dict:
    return objectives.options(self.objective, self.uwo_lam, self.brme_lam)


def member_scores(sources, tokens, mask, prompt_len=None) -> list[np.ndarray]:
  """Every reward source's member rewards [B, K_j] (numpy) of right-padded sequences whose
  first ``prompt_len`` [B] tokens are the prompt (None: sources that need it refuse)."""
  return member_scores_and_stds(sources, tokens, mask, prompt_len)[0]


def member_scores_and_stds(sources, tokens, mask, prompt_len=None):
  """(``member_scores``, and per source the predicted stds [B, K_j] of a source with
  Gaussian heads (``has_stds``: its rewards are their means) or None), one pass each."""
  rewards, stds = [], []
  for source in sources:
    if getattr(source, "has_stds", False):
      r, s = to_host(source.with_stds(tokens, mask, prompt_len))
    else:
      r, s = to_host(source(tokens, mask, prompt_len)), None
    rewards.append(r[:, None] if r.ndim == 1 else r)
    stds.append(s)
  return rewards, stds


def identity_stats(members_per_source: list[int]) -> tuple[dict, ...]:
  """Statistics that leave every member as it is (mean 0, std 1): no normalisation, or
  the placeholder a checkpoint's statistics are restored into."""
  return tuple({"mu": np.zeros(k, np.float32), "sigma": np.ones(k, np.float32)}
               for k in members_per_source)


def member_stats(reference_members: list[np.ndarray]) -> tuple[dict, ...]:
  """Per source, {"mu": [K], "sigma": [K]} of member rewards [..., K] of initial-policy
  samples (``ensemble.normalization_stats``: population std, 1 for a constant member)."""
  stats = []
  for rewards in reference_members:
    mu, sigma = objectives.normalization_stats(rewards)
    stats.append({"mu": np.asarray(mu, np.float32), "sigma": np.asarray(sigma, np.float32)})
  return tuple(stats)


def normalize_members(members: list[np.ndarray], stats) -> list[np.ndarray]:
  """Each source's members [..., K] as (R_i − μ_i) / σ_i with its ``member_stats``."""
  if len(stats) != len(members):
    raise ValueError(f"{len(stats)} sets of member statistics for {len(members)} reward "
                     "sources")
  return [np.asarray(objectives.normalize(m, np.asarray(s["mu"]), np.asarray(s["sigma"])))
          for m, s in zip(members, stats)]


def objective_scores(members: list[np.ndarray], cfg: ScoreConfig, stats=None,
                     stds=None) -> np.ndarray:
  """[..., J]: each source's members, normalised with ``stats`` (needed when
  ``cfg.member_norm``), reduced by the ensemble objective.

  ``stds``: per source, the predicted stds [..., K_j] of Gaussian heads or None
  (``member_scores_and_stds``). "brme" reads them to pick each example's nominal head;
  normalisation divides them by the member's σ_i as it divides the means.
  """
  if cfg.member_norm:
    if stats is None:
      raise ValueError("reward.member_norm=True needs the member statistics (member_stats)")
    members = normalize_members(members, stats)
  stds = [None] * len(members) if stds is None else list(stds)
  if len(stds) != len(members):
    raise ValueError(f"{len(stds)} sets of member stds for {len(members)} reward sources")
  scores = []
  for j, (m, s) in enumerate(zip(members, stds)):
    kwargs = dict(cfg.objective_kwargs)
    if cfg.objective == "brme" and s is not None:
      kwargs["stds"] = np.asarray(s) / np.asarray(stats[j]["sigma"]) if cfg.member_norm else s
    scores.append(np.asarray(objectives.combine(m, cfg.objective, **kwargs)))
  return np.stack(scores, axis=-1)


def reference_levels(ref_scores: np.ndarray, cfg: ScoreConfig) -> np.ndarray:
  """r^ref [P, J] from the objective scores [P, S, J] of S reference samples per prompt."""
  return np.asarray(transforms.reference_quantile(np.moveaxis(ref_scores, 1, -1),
                                                  cfg.lsc_quantile))


def transform(scores: np.ndarray, r_ref: np.ndarray | None, cfg: ScoreConfig) -> np.ndarray:
  """[B, J] objective scores (and [B, J] reference levels for "lsc") -> [B]: "lsc" the
  AND-combination, "none" the sum weighted by ``cfg.weights`` (all 1 when empty)."""
  if cfg.transform == "lsc":
    return np.asarray(transforms.and_combine(scores, r_ref))
  if not cfg.weights:
    return scores.sum(-1)
  if len(cfg.weights) != scores.shape[-1]:
    raise ValueError(f"reward.weights has {len(cfg.weights)} entries for "
                     f"{scores.shape[-1]} reward sources")
  return np.asarray(transforms.weighted_sum(scores, np.asarray(cfg.weights, np.float32)))


def calibrate(scores: np.ndarray, confidence: np.ndarray, ema, cfg: ScoreConfig):
  """PPO-C (``docs/algorithms.md`` §4b): (r' = r + w·(r − r̄)·(ĉ − 0.5) [B], r̄ updated with
  this batch's raw scores) for scores r [B], stated confidences ĉ [B] and the EMA r̄ []
  of earlier batches; the batch is judged against r̄ before it joins it."""
  out = transforms.calibrated_reward(scores, confidence, ema, cfg.calibration_w)
  return np.asarray(out), transforms.ema_update(ema, scores, cfg.calibration_alpha)


def running_normalize(scores: np.ndarray, moments, cfg: ScoreConfig):
  """(processed [B], updated moments): running normalisation then clipping."""
  clip = cfg.clip or None
  if not cfg.normalize:
    return np.asarray(scores if clip is None else np.clip(scores, -clip, clip)), moments
  moments = running_stats.update_moments(moments, jnp.asarray(scores))
  return np.asarray(running_stats.normalize_and_clip(scores, moments, clip)), moments
