"""Reward-model overoptimisation under PPO (Gao et al. 2022; Coste et al. 2023).

Run: ``python experiments/overoptimization_ppo.py
--config=experiments/configs/overoptimization_ppo.py``. The default fits the 2-core CPU
budget (under 20 minutes). For each seed one K-member proxy ensemble is trained on the
synthetic task with 25% label noise, then PPO runs once per (objective, KL coefficient).

``task`` and ``proxy`` are those of ``experiments/configs/overoptimization_bon.py`` (the
proxies are trained by the same helpers); ``ppo`` holds overrides of
``rmjax/configs/ppo.py`` by section (ppo, optim.actor, optim.critic, reward, ...: nested), the
rest keep that file's defaults.
"""

import ml_collections

from experiments.configs import overoptimization_bon as bon


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/overoptimization_ppo"
  # A seed sets the proxies' training seed and the PPO seed (prompts, sampling, shuffles).
  c.seeds = (0, 1, 2)
  c.label_noise = 0.25  # fraction of swapped train labels (Coste et al.'s noisy setting)
  # "single": member 0 of the ensemble alone; "wco"/"uwo" over all members, each member
  # normalised on base-policy samples first (algorithms.md §3).
  c.objectives = ("single", "wco", "uwo")
  c.uwo_lam = 0.1  # Coste et al.'s PPO value (algorithms.md §3: 0.5 for best-of-n)
  c.kl_coefs = (0.0, 0.01, 0.2)  # fixed beta of the per-token KL penalty
  # Base-policy samples for the per-member normalisation: about prompts x samples, drawn
  # by the PPO trainer in rollout-sized batches (reward.member_norm, reward.norm_batches).
  c.norm = ml_collections.ConfigDict(dict(prompts=64, samples=8))
  c.task, c.proxy = bon.task_section(), bon.proxy_section()  # the best-of-n study's
  c.ppo = ml_collections.ConfigDict(dict(
      ppo=ml_collections.ConfigDict(dict(iterations=50, prompts=8, samples_per_prompt=4)),
      optim=ml_collections.ConfigDict(dict(
          actor=ml_collections.ConfigDict(dict(learning_rate=1e-4)),
          critic=ml_collections.ConfigDict(dict(learning_rate=1e-3))))))
  return c
