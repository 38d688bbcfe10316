"""Default config of ``rmjax demo``: build a model, shard it, sample from it, score it."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = "s0"  # A preset name from rmjax.models.config.PRESETS.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.seed = 0
  config.batch = 16
  config.prompt_len = 64
  config.new_tokens = 64
  config.temperature = 1.0
  config.top_k = 0
  config.top_p = 1.0
  return config
