"""Reward-model overoptimisation under best-of-n (Gao et al. 2022; Coste et al. 2023;
Eisenstein et al. 2023).

Run: ``python experiments/overoptimization_bon.py
--config=experiments/configs/overoptimization_bon.py``. The default is sized for a 2-core
CPU (README: the measured wall time). ``--config.scale=S`` multiplies the held-out
prompts, the samples per prompt, the largest n, the training pairs, the pretraining text
and the proxies' width by S for an accelerator (S = 8 on one GPU: about the CPU default's
wall time, by the FLOP count; not run). The synthetic task (base policy, gold reward)
never scales: it is the fixed world the proxies are judged in.

``proxy`` holds one member's shape: ``model``, ``optim`` and ``train`` replace those fields
of ``rmjax/configs/train_rm.py`` (the rest keep its defaults, so a member is exactly what
``rmjax train-rm`` would train), ``pretrain`` sizes its backbone's LM pretraining
(``rmjax.lm.pretrain``), ``k`` the members and ``kind`` the ensemble that
``experiments/proxies.train_proxies`` (the PPO study's proxies) builds.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from rmjax.tasks import preference as synthetic


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/overoptimization_bon"
  # A seed sets every member's seed (experiments/proxies.member_seed: backbone
  # pretraining, head initialisation, data order) and the best-of-n sampling key.
  c.seeds = (0, 1, 2)
  c.scale = 1  # see the module docstring
  c.noise_levels = (0.0, 0.25)  # fraction of swapped train labels (Coste et al.: 0 and 0.25)
  c.kinds = ("pretrain", "finetune")  # pretrain-diverse and finetune-diverse ensembles
  # UWO's λ = scale / v, v the mean over base-policy samples of the members' variance
  # (members normalised to unit std): λ·Var is then `scale` on a typical sample.
  c.uwo_scales = (0.25, 0.5, 1.0, 2.0)
  c.bootstrap = ml_collections.ConfigDict(dict(resamples=2000, seed=0))
  c.bon = ml_collections.ConfigDict(dict(
      num_prompts=32,  # fresh held-out prompts, the same for every seed
      num_samples=1024,  # N base-policy responses per prompt and seed
      max_n=512,  # the n grid is 1, 2, 4, ..., max_n (a power of 2, <= N)
      prompt_key=1000,  # folded into the task seed's key: a stream no split uses
      chunk_size=512))  # rows per generate/score call
  c.task, c.proxy = task_section(), proxy_section()
  return c


def task_section() -> ml_collections.ConfigDict:
  """The synthetic task: every SyntheticConfig field (rmjax/tasks/preference.py), at its
  default unless set here; label_noise comes from the experiment."""
  task = {f.name: f.default for f in dataclasses.fields(synthetic.SyntheticConfig)
          if f.name != "label_noise"}
  task.update(num_train_pairs=8000, num_eval_pairs=500,
              length_threshold=config_dict.placeholder(int),  # None: placed by measurement
              marker_threshold=config_dict.placeholder(int))
  return ml_collections.ConfigDict(task)


def proxy_section() -> ml_collections.ConfigDict:
  """One proxy member: the base policy's size (d_model 64), so it can fit the labels."""
  return ml_collections.ConfigDict(dict(
      k=4, kind="pretrain",
      model=ml_collections.ConfigDict(dict(
          d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)),
      optim=ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=25)),
      train=ml_collections.ConfigDict(dict(steps=400, batch_size=32)),
      pretrain=ml_collections.ConfigDict(dict(
          sequences=8192, steps=300, batch_size=64, learning_rate=2e-3, warmup_steps=20))))
