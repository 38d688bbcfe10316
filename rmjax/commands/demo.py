"""``rmjax demo``: the foundation end to end on whatever devices are local.

Builds the configured model directly sharded over a (data, fsdp, tensor) mesh,
samples a batch of continuations with the compiled KV-cache sampler, and scores the
sequences with a reward head on the same backbone. Prompts are random token ids: the
synthetic preference task and trained reward models arrive with reward-model training.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx

from rmjax import parallel
from rmjax.models import config as model_config
from rmjax.models import sampler
from rmjax.models.transformer import Transformer


def run(config) -> dict:
  cfg = model_config.PRESETS[config.model](num_reward_heads=1)
  mesh = parallel.make_mesh(parallel.MeshConfig(**config.mesh))
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; "
        f"mesh {dict(mesh.shape)}")
  model = parallel.init_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(config.seed)), mesh)
  params = nnx.state(model, nnx.Param)
  count = sum(x.size for x in jax.tree.leaves(params))
  print(f"model {config.model}: {count:,} parameters ({cfg.family}, d_model {cfg.d_model}, "
        f"{cfg.n_layers} layers)")

  key = jax.random.key(config.seed)
  prompt_key, sample_key = jax.random.split(key)
  prompts = jax.random.randint(prompt_key, (config.batch, config.prompt_len), 0,
                               cfg.vocab_size, jnp.int32)
  prompts = parallel.shard_batch(prompts, mesh)
  sampling = sampler.SamplingConfig(max_new_tokens=config.new_tokens,
                                    temperature=config.temperature, top_k=config.top_k,
                                    top_p=config.top_p)
  start = time.perf_counter()
  out = sampler.generate(model, prompts, None, sample_key, sampling)
  out.tokens.block_until_ready()
  first = time.perf_counter() - start
  start = time.perf_counter()
  out = sampler.generate(model, prompts, None, sample_key, sampling)
  out.tokens.block_until_ready()
  steady = time.perf_counter() - start
  new_tokens = int(out.mask.sum())
  print(f"sampled {config.batch} x {config.new_tokens} tokens: first call {first:.2f} s "
        f"(with compilation), then {steady:.3f} s = {new_tokens / steady:,.0f} tokens/s")

  tokens, mask = out.sequences()
  rewards = jax.jit(lambda m, t, k: m.rewards(m(t, k)[0], k))(model, tokens, mask)
  print(f"reward head (untrained) on the samples: mean {float(rewards.mean()):+.4f}, "
        f"std {float(rewards.std()):.4f}")
  print("first sample:", out.tokens[0, :16].tolist(), "...")
  return {"tokens_per_s": new_tokens / steady, "rewards": rewards}
