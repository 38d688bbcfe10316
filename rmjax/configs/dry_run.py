"""Default config of ``rmjax dry-run``: ``rmjax train-rm``'s default reward model compiled
for an 8-device (data 2, fsdp 2, tensor 2) mesh of fake CPU devices, in seconds.

Any ``train-rm`` or ``rl`` config becomes a dry-run config by adding a ``dry_run``
section (``section``); ``experiments/configs/pod_*.py`` are pod-scale examples.
"""

import ml_collections

from rmjax.configs import train_rm


def section(**fields) -> ml_collections.ConfigDict:
  """The ``dry_run`` section: these defaults with ``fields`` on top."""
  defaults = dict(
      command="train-rm",  # or "rl": which step to compile
      devices=8,  # devices of the target mesh (v5p-64: 32 chips); the mesh must fill them
      memory_per_device_gib=0.0,  # fail above this (v5p: 95, v5e: 16); 0 = no check
      # libtpu topology to compile for without a TPU (e.g. "v5p:4x4x2"); "" = fake CPU devices
      topology="",
      # XLA:CPU's schedule behind the temporaries estimate: "memory" or "concurrency"
      # (rmjax/dry_run/launch.py says why there are two)
      cpu_scheduler="memory",
      # Shapes the data would supply: token ids, row width (train-rm: each side, or the
      # packed row with train.shared_prompt, and MetaRM's meta responses; rl: prompt_len +
      # response_len, response_len 0 = rl.max_new_tokens) and rows per step (0 =
      # train.batch_size, or the PPO minibatch). A train-rm model.init_from gives the
      # model's shapes from its config.json or GGUF metadata (no weight is read). An rl config also gives model (train-rm's model section's form): the
      # policy's and reward model's shape, which a real run takes from the reward model.
      vocab_size=128, seq_len=64, prompt_len=0, response_len=0, batch_size=0,
      report="")  # also write the report as JSON here
  return ml_collections.ConfigDict({**defaults, **fields})


def get_config() -> ml_collections.ConfigDict:
  c = train_rm.get_config()
  c.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2, ensemble=1))
  c.dry_run = section()
  return c
