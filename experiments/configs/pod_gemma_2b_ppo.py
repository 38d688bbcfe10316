"""PPO with Gemma-2B-shape actor, critic, reference and reward model on a v5p-16 (8 chips,
95 GiB of HBM each).

The shape, not Gemma: our "llama" family (SwiGLU MLP, RMSNorm, RoPE) at Gemma-2B's
sizes: vocab 256,000, d_model 2,048, 18 layers, 8 heads / 1 KV head of head_dim 256,
d_ff 16,384, tied embeddings (2.5 B parameters per network). Gemma's GeGLU MLP, its
(1 + w) RMSNorm scale and its embedding scaling are not modelled; the sizes of
parameters and activations are. float32 parameters and AdamW moments, bfloat16 compute,
every block rematerialised. 32 prompts of 512 tokens x 4 samples of 256 new tokens an
iteration, 4 minibatches of 32 episodes. Mesh: fsdp 8.

``rmjax rl`` itself runs on the synthetic task, whose policy and reward model fix the
shapes; this config is for ``rmjax dry-run``, which builds the networks from
``dry_run.model``::

    rmjax dry-run --config=experiments/configs/pod_gemma_2b_ppo.py

Peak 34.6 GiB per device of 95 (the PPO update; the rollout forward 16.1 GiB), with the
activations sharded over the batch under fsdp (``benchmarks/README.md``, "Dry run").
A v5p-16 has two hosts; ``rmjax rl`` runs on several (``tests/parallel/test_multihost.py``).
"""

import ml_collections

from rmjax.configs import dry_run, rl


def get_config() -> ml_collections.ConfigDict:
  c = rl.get_config()
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=8, tensor=1, ensemble=1))
  c.rl.update(dict(prompts=32, samples_per_prompt=4, minibatches=4, max_new_tokens=256))
  c.dry_run = dry_run.section(
      command="rl", devices=8, memory_per_device_gib=95.0, vocab_size=256_000,
      prompt_len=512, model=ml_collections.ConfigDict(dict(
          preset="s0", family="llama", d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1,
          head_dim=256, d_ff=16384, max_seq_len=8192, rope_theta=10_000.0, norm_eps=1e-6,
          tie_embeddings=True, dtype="bfloat16", param_dtype="float32", remat=True,
          init_from="")))
  return c
