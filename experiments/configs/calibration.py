"""Config of ``experiments/calibration.py``: PPO, PPO-M and PPO-C on the synthetic task whose
responses state a confidence, with labels that favour confident responses.

Run: ``python experiments/calibration.py --config=experiments/configs/calibration.py``.
``rl`` holds overrides of ``rmjax/configs/rl.py`` by section (nested).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/calibration"
  c.seeds = (0, 1, 2)
  c.methods = ("ppo", "ppo_m", "ppo_c")
  # The labelling score gains confidence_bias * (c - 0.5): labellers who favour stated
  # confidence; 2.0 moves a label about as much as one length step past the gold turn.
  c.confidence_bias = 2.0
  c.eval_samples = 1024  # fixed prompts on which every policy's calibration is read
  # Both reward models: rmjax train-rm's default on the task's (biased) labels, trained once.
  c.proxy = ml_collections.ConfigDict(dict(steps=600, seed=0))
  c.rl = ml_collections.ConfigDict(dict(
      rl=ml_collections.ConfigDict(dict(iterations=60, prompts=16, samples_per_prompt=4)),
      kl=ml_collections.ConfigDict(dict(coef=0.05)),
      optim=ml_collections.ConfigDict(dict(
          actor=ml_collections.ConfigDict(dict(learning_rate=5e-4, warmup_steps=10)),
          critic=ml_collections.ConfigDict(dict(learning_rate=1e-3))))))
  return c
