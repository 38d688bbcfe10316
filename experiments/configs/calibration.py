"""Config of ``experiments/calibration.py``: PPO, PPO-M and PPO-C on the synthetic task whose
responses state a confidence, with labels that favour confident responses.

Run: ``python experiments/calibration.py --config=experiments/configs/calibration.py``.
``rl`` holds overrides of ``rmjax/configs/rl.py`` by section (nested): the frontier study's
(``experiments/configs/frontier.py``), so that PPO here is the PPO of the frontier.
"""

import ml_collections

from experiments.configs import frontier


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
  c.rl = frontier.get_config().rl  # the frontier's PPO settings, unchanged
  return c
