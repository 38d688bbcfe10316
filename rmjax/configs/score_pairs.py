"""Default config of ``rmjax score-pairs``: the preference strength of every training pair
of an ensemble run, for ``data.strength`` in later ``train-rm`` runs."""

import ml_collections

from rmjax.configs import describe


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # A train-rm run with ensemble.k >= 2 members; with ensemble.folds >= 2 every pair is
  # scored only by the members that never trained on it (out of fold).
  c.workdir = "runs/train_rm"
  c.output = ""  # "" = <workdir>/strength.npz
  c.in_sample = False  # score every pair with every member (the paper's variant)
  c.batch_size = 64  # sequences per forward pass (rounded up to the data-parallel size)
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c


FIELDS = {
    "workdir": "a train-rm run with ensemble.k >= 2 (ensemble.folds >= 2: out of fold)",
    "output": "strength file to write; \"\" = <workdir>/strength.npz",
    "in_sample": "score every pair with every member (the paper's variant)",
    "batch_size": "sequences per forward pass (rounded up to the data-parallel size)",
    **describe.section("mesh", describe.MESH),
}
