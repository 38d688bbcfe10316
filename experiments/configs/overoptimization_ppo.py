"""Reward-model overoptimisation under PPO, methods compared at matched KL (Gao et al. 2022;
Coste et al. 2023, Figs. 4-6).

Run: ``python experiments/overoptimization_ppo.py
--config=experiments/configs/overoptimization_ppo.py``. The default (3 seeds, 4-member
proxies, 7 PPO runs per seed) is sized for the 2-core CPU budget of 30 minutes (the
measured time is in experiments/README.md). ``--config.scale=8`` (or more) multiplies the
base-policy samples, the normalisation samples, the prompts per PPO iteration, the
training pairs, the pretraining text and the proxies' width for an accelerator; the PPO
iterations do not scale (a larger batch only makes each iteration's gold and KL less
noisy). The synthetic task itself (base policy, gold reward) never scales: it is the fixed
world the proxies are judged in.

For each seed one K-member proxy ensemble is trained (shared by every method of the
seed), then PPO runs once per method against it: ``objectives`` without a KL penalty,
``penalised`` objectives again with each of ``kl_coefs``, and the gold positive control
(PPO against the gold reward itself). ``task`` and ``proxy`` are those of
``experiments/configs/overoptimization_bon.py`` (the proxies are trained by the same
helper); ``ppo`` holds overrides of ``rmjax/configs/rl.py`` by section (nested), the rest
keep that file's defaults.
"""

import ml_collections

from experiments.configs import overoptimization_bon as bon


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/overoptimization_ppo"
  # A seed sets the proxies' training seed, the PPO seed (prompts, sampling, shuffles) and
  # the base-policy samples of the baseline and the preconditions.
  c.seeds = (0, 1, 2)
  # Multiplies base.prompts, norm.prompts, ppo.rl.prompts, task.num_train_pairs,
  # proxy.pretrain.sequences and the proxy's d_model, d_ff and heads. 1 = the CPU default.
  c.scale = 1
  c.label_noise = 0.25  # fraction of swapped train labels (Coste et al.'s noisy setting)
  # "single": member 0 alone (the baseline every method is compared against); "mean",
  # "wco", "uwo" over all members, each member normalised on base-policy samples first.
  # All run without a KL penalty; the ``penalised`` ones run again with each coefficient.
  c.objectives = ("single", "mean", "wco", "uwo")
  c.penalised = ("wco", "uwo")
  c.kl_coefs = (0.01,)  # fixed beta of the per-token KL penalty (small: Coste et al. Fig. 6)
  # UWO's lambda, per seed: uwo_ratio * std over base samples of the (normalised) member
  # mean / mean over base samples of the member variance, so the variance penalty of a
  # typical base sample is uwo_ratio times the spread of the mean reward it is subtracted
  # from, whatever the members' agreement.
  c.uwo_ratio = 0.5
  # The x axis: the trainer's per-iteration "kl" (E[sum_t log pi/pi_ref], the k1 estimate
  # of KL(pi || pi_ref) on the rollout's own samples) or "kl_k2" (k2).
  c.kl_metric = "kl"
  # Gold at a KL value: the mean per-iteration gold of the `smooth` iterations centred on
  # the first one whose centred running mean (over `smooth` iterations) of KL reaches it.
  c.smooth = 5
  c.grid_points = 8  # the plotted matched-KL grid: top * (g / grid_points)^2, g = 1..
  c.alpha = 0.05  # Holm's family-wise error rate over the methods compared with "single"
  c.bootstrap = ml_collections.ConfigDict(dict(resamples=2000, seed=0))
  # Base-policy samples (prompts x samples, fresh prompts per seed): the gold baseline,
  # UWO's lambda and the ensemble precondition (member disagreement against the mean's
  # error over each prompt's samples).
  c.base = ml_collections.ConfigDict(dict(prompts=32, samples=16))
  # Base-policy samples for the trainer's per-member normalisation: about prompts x
  # samples, drawn in rollout-sized batches (reward.member_norm, reward.norm_batches).
  c.norm = ml_collections.ConfigDict(dict(prompts=64, samples=8))
  c.task, c.proxy = bon.task_section(), bon.proxy_section()  # the best-of-n study's
  c.ppo = ml_collections.ConfigDict(dict(
      rl=ml_collections.ConfigDict(dict(iterations=60, prompts=16, samples_per_prompt=4)),
      optim=ml_collections.ConfigDict(dict(
          # Warmup: Adam's first steps at the full rate move this small policy by several
          # nats of KL at once, and gold then falls from the jump, not from the proxy.
          actor=ml_collections.ConfigDict(dict(learning_rate=5e-4, warmup_steps=10)),
          critic=ml_collections.ConfigDict(dict(learning_rate=1e-3))))))
  return c
