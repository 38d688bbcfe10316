"""Transforming and combining rewards in PPO (Wang et al. 2024, algorithms.md §4).

Run: ``python experiments/lsc.py --config=experiments/configs/lsc.py``. The default (5
seeds) fits the 2-core CPU budget (the measured time is in experiments/README.md);
``--config.scale=4`` (or more) multiplies the training and held-out pairs, the reward
models' steps and width, PPO's prompts per iteration, the held-out evaluation prompts and
the base-policy sample for an accelerator (PPO's iteration count and the synthetic task
itself do not scale: the task is the fixed world everything is judged in).

Two comparisons on the synthetic gold task (version 2 unless ``task.version=1``), each
seed training its own reward models:
  (a) one reward model labelled by the gold total; PPO on its raw score vs on its LSC
      transform log σ(r − r_ref(x));
  (b) two reward models, one per property (``properties``: the gold terms that label
      each); PPO on the raw sum vs on the AND-combination Σ_j log σ(r_j − r_j^ref(x)).
The verdicts come from paired intervals on held-out prompts (``eval``), Holm-corrected
over the two claims; the precondition is each reward model's held-out agreement with its
own gold property; the control is PPO on the gold total itself.

The ``rm`` section has ``rmjax train-rm``'s shape and the ``ppo`` section ``rmjax rl``'s
(rmjax/configs/train_rm.py, rmjax/configs/rl.py): the fields given here replace those
defaults and the rest keep them.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from rmjax.tasks import preference as synthetic


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/lsc"
  # A seed sets the reward models' training seed and PPO's seed (prompts, sampling,
  # minibatch order); the task (base policy, gold reward) is the same for every seed.
  c.seeds = (0, 1, 2, 3, 4)
  # Multiplies task.num_train_pairs, task.num_eval_pairs, rm.train.steps, rm.model.d_model
  # and d_ff, ppo.rl.prompts, eval.prompts and base_samples. 1 = the CPU default.
  c.scale = 1
  # (b): the two properties, each the "+"-joined gold terms that label one reward model.
  # Together they partition the version-2 gold total (helpful + harmless + length +
  # markers): the two shape terms, each turning inside the base distribution, go with
  # helpfulness, so "sum" optimises the same total as "raw" through two models.
  c.properties = ("helpful+length+markers", "harmless")
  # Figures at the end of PPO are averaged over the last `final_window` iterations.
  c.final_window = 5
  c.base_samples = 1024  # base-policy samples for each property's mean and spread
  # Held-out evaluation of every final policy: `prompts` prompts (the same for every seed
  # and method), `samples` responses each, sampled with one key per seed for all methods.
  c.eval = ml_collections.ConfigDict(dict(prompts=128, samples=4))
  # Precondition: each reward model's held-out agreement with its own gold property must
  # have its interval's lower end above 0.5 + precondition_margin.
  c.precondition_margin = 0.05
  # The control (PPO on the gold total itself must raise held-out gold) runs on the first
  # control_seeds seeds.
  c.control_seeds = 5
  c.control_iterations = 0  # the control's PPO iterations; 0 = ppo.rl.iterations (the arms')
  c.num_resamples = 2000  # bootstrap resamples of every interval
  c.alpha = 0.05  # family-wise error rate of Holm's correction over the two claims
  # The synthetic task: every SyntheticConfig field at its default unless set here;
  # label_by comes from the comparison ("total" for (a), `properties` for (b)).
  task = {f.name: f.default for f in dataclasses.fields(synthetic.SyntheticConfig)
          if f.name != "label_by"}
  task.update(num_train_pairs=2000, num_eval_pairs=250,
              length_threshold=config_dict.placeholder(int))
  c.task = ml_collections.ConfigDict(task)
  c.rm = ml_collections.ConfigDict(dict(
      model=ml_collections.ConfigDict(dict(
          d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=64)),
      optim=ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=25)),
      train=ml_collections.ConfigDict(dict(steps=250, batch_size=16))))
  # PPO: the same settings for every arm; only reward.transform differs within (a) and (b).
  # No running normalisation or clipping of the score: dividing by the running std would
  # undo the saturation that is LSC's point (with them on, one exploratory seed at KL coef
  # 0.01 gave raw and LSC the same collapse). KL coef 0.05 is the paper's β (§5).
  c.ppo = ml_collections.ConfigDict(dict(
      rl=ml_collections.ConfigDict(dict(iterations=30, prompts=8, samples_per_prompt=4)),
      kl=ml_collections.ConfigDict(dict(coef=0.05)),
      # member_norm off: each arm has single-member reward models, and LSC is defined on
      # the raw reward (Wang et al.); rescaling it to unit std would move its saturation.
      reward=ml_collections.ConfigDict(dict(lsc_quantile=0.85, lsc_samples=8,
                                            normalize=False, clip=0.0, member_norm=False)),
      optim=ml_collections.ConfigDict(dict(
          # The smallest of {2e-4, 5e-4, 1e-3} at which PPO on the gold total itself (the
          # control) raises held-out gold on the version-2 task within 30 iterations: at
          # 2e-4 it does not, so no arm's result would mean anything. Warmup as in the PPO
          # overoptimisation study: without it Adam's first full-rate steps can drop gold
          # on their own, which would pass for reward hacking.
          actor=ml_collections.ConfigDict(dict(learning_rate=5e-4, warmup_steps=10)),
          critic=ml_collections.ConfigDict(dict(learning_rate=1e-3))))))
  return c
