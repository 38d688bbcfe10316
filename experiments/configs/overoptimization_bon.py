"""Reward-model overoptimisation under best-of-n (Gao et al. 2022; Coste et al. 2023).

Run: ``python experiments/overoptimization_bon.py
--config=experiments/configs/overoptimization_bon.py``. The default fits the 2-core CPU
budget (under 15 minutes); ``--config.scale=8`` (or more) grows the held-out prompts, the
samples per prompt, the largest n, the training pairs and the proxies' width for an
accelerator. The synthetic task itself (base policy, gold reward) never scales: it is
the fixed world the proxies are judged in.

The ``proxy`` section has ``rmjax train-rm``'s shape (model, optim, train, ensemble); the
fields given here replace those of ``rmjax/configs/train_rm.py`` and the rest keep its
defaults, so a proxy is exactly what ``rmjax train-rm`` would train.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from rmjax.tasks import preference as synthetic


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/overoptimization_bon"
  # A seed sets the proxies' training seed (each member's head initialisation and data
  # order, rmjax.rm.members.member_seeds) and the best-of-n sampling key.
  c.seeds = (0, 1, 2)
  # Multiplies bon.num_prompts, bon.num_samples, bon.max_n, task.num_train_pairs and the
  # proxy's d_model, d_ff and heads. 1 = the CPU default.
  c.scale = 1
  c.noise_levels = (0.0, 0.25)  # fraction of swapped train labels (Coste et al.: 0 and 0.25)
  c.objectives = ("single", "mean", "wco", "uwo")  # "single": the average member's curve
  c.uwo_lam = 0.5  # Coste et al.'s best-of-n value (algorithms.md §3)
  c.bon = ml_collections.ConfigDict(dict(
      num_prompts=4,  # held-out prompts, fixed across seeds (drawn from prompt_key)
      num_samples=8192,  # N responses per prompt from the base policy
      max_n=4096,  # the n grid is 1, 2, 4, ..., max_n (a power of 2, <= N)
      prompt_key=1000,  # folded into the task seed's key: a stream no split uses
      chunk_size=512))  # rows per generate/score call
  c.task, c.proxy = task_section(), proxy_section()
  return c


def task_section() -> ml_collections.ConfigDict:
  """The synthetic task: every SyntheticConfig field (rmjax/tasks/preference.py), at its
  default unless set here; label_noise comes from the experiment. Fewer training pairs
  than train-rm's 4000 keep the trainings within the CPU budget."""
  task = {f.name: f.default for f in dataclasses.fields(synthetic.SyntheticConfig)
          if f.name != "label_noise"}
  task.update(num_train_pairs=2000, num_eval_pairs=250,
              length_threshold=config_dict.placeholder(int))  # None: a base-length quantile
  return ml_collections.ConfigDict(task)


def proxy_section() -> ml_collections.ConfigDict:
  """The proxy ensemble: five separate members, trained as ``rmjax train-rm`` would."""
  return ml_collections.ConfigDict(dict(
      ensemble=ml_collections.ConfigDict(dict(k=5, shared_backbone=False)),
      model=ml_collections.ConfigDict(dict(
          d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=64)),
      optim=ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=25)),
      train=ml_collections.ConfigDict(dict(steps=250, batch_size=16))))
