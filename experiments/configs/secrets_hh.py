"""Preference strength on HH-RLHF harmless (Secrets of RLHF II, §2) with linear probes.

Run: ``python experiments/secrets_hh.py --config=experiments/configs/secrets_hh.py``.
The data, model, cache, loss and optim sections are ``hh_rlhf_smollm2``'s, so the
members train on the very features that experiment cached (n = 0: final norm + reward
head on the last token's state) and with its n = 0 recipe (lr 3e-3, 630 steps of 32).
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from experiments.configs import hh_rlhf_smollm2  # noqa: E402


def get_config() -> ml_collections.ConfigDict:
  c = hh_rlhf_smollm2.get_config()
  del c.ns, c.check_set, c.per_n.n2  # always n = 0; no eval-rm round trip of saved models
  c.workdir = "runs/secrets_hh"
  c.eval_sets = ""  # the held-out HH split only
  c.seeds = (0, 1, 2)  # base seeds of the repetitions: fold split and members' seeds
  c.strength = ml_collections.ConfigDict(dict(
      members=10,  # M reward models per variant, as the paper
      # Out-of-fold variant: pairs dealt into F folds, member m trains without fold m % F,
      # so every pair is scored by M / F members that never saw it. The paper's own
      # variant (every member trains on every pair) runs beside it.
      folds=2))
  return c
