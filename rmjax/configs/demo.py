"""Default config of ``rmjax demo``: build a model, shard it, sample from it, score it."""

import ml_collections

from rmjax.configs import describe


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


FIELDS = {
    "model": "preset name from rmjax.models.config.PRESETS",
    **describe.section("mesh", describe.MESH),
    "seed": "seed of the weights, the random prompts and sampling",
    "batch": "sequences sampled at once (divisible by the data-parallel size)",
    "prompt_len": "tokens of each random prompt",
    "new_tokens": "tokens sampled after each prompt",
    "temperature": "sampling temperature",
    "top_k": "sample among the k most likely tokens; 0 = no limit",
    "top_p": "nucleus sampling: the smallest set of tokens with this much probability",
}
