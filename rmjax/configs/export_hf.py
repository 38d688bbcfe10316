"""Default config of ``rmjax export-hf``: a trained reward model (as a Hugging Face
sequence classifier) or policy (as a causal LM) in a Hugging Face folder."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/train_rm"  # A train-rm or rl run's workdir (or its checkpoints folder).
  c.out = ""  # The folder to write; it must not exist unless overwrite.
  c.overwrite = False  # Replace an existing ``out`` (only once the new folder is complete).
  # "reward": the reward model of a train-rm run; "policy": an rl run's actor, or the
  # synthetic task's base policy of a train-rm run; "auto": policy for an rl run, else reward.
  c.kind = "auto"
  c.step = -1  # The checkpoint step; -1 = the latest.
  # Reward models: -1 = every member (separate members: one folder each, member_<m>/;
  # K heads on one backbone: num_labels = K); m = member m alone, num_labels = 1.
  c.member = -1
  # The id transformers treats as padding when it looks for the last real token:
  # -1 = the run's tokenizer's pad token, else 0 (what rmjax pads with).
  c.pad_token_id = -1
  return c


FIELDS = {
    "workdir": "a train-rm or rl run folder (or its checkpoints folder)",
    "out": "folder to write; it must not exist unless overwrite",
    "overwrite": "replace an existing out, once the new folder is complete",
    "kind": "\"reward\", \"policy\" or \"auto\" (policy for an rl run, else reward)",
    "step": "checkpoint step to export; -1 = the latest",
    "member": "reward models: -1 = every member; m = member m alone",
    "pad_token_id": "padding id written for transformers; -1 = the run's tokenizer's (else 0)",
}
