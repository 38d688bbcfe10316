"""A Llama-3-8B-shape reward model on a v5p-64 (32 chips, 95 GiB of HBM each).

Shape: vocab 128,256, d_model 4,096, 32 layers, 32 heads / 8 KV heads, d_ff 14,336,
RoPE theta 500,000, untied embeddings, one reward head (7.5 B parameters). float32
parameters and AdamW moments, bfloat16 compute, every block rematerialised; 64 pairs of
2,048 tokens a step (each side its own row: 128 rows), two steps per update
(``optim.grad_accum``: 128 pairs an update). Mesh: fsdp 16 x data 2 = 32 devices.

Check that it fits before renting the pod::

    rmjax dry-run --config=experiments/configs/pod_llama3_8b_rm.py

It does: 63.6 GiB per device of 95 (``benchmarks/README.md``, "Dry run"). Before the
model constrained its residual stream to batch sharding, GSPMD had every fsdp device
compute the whole batch and the same step needed 691 GiB.

Train on the pod (``tpu/README.md``) with ``rmjax train-rm`` and the same file, after
pointing ``data.files`` at preference files and a Llama-3 tokenizer folder, and
``model.init_from`` at a Llama-3-8B Hugging Face folder (the dry run reads the same shapes
from that folder's config.json, or from the fields below when ``init_from`` is empty).
"""

import ml_collections

from rmjax.configs import dry_run, train_rm


def get_config() -> ml_collections.ConfigDict:
  c = train_rm.get_config()
  c.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=16, tensor=1, ensemble=1))
  c.model = ml_collections.ConfigDict(dict(
      preset="s0", family="llama", d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
      d_ff=14336, max_seq_len=8192, rope_theta=500_000.0, norm_eps=1e-5,
      tie_embeddings=False, dtype="bfloat16", param_dtype="float32", remat=True,
      init_from=""))
  c.data.source = "files"
  c.data.files.update(dict(seq_len=2048, max_response_len=1024))
  c.optim.update(dict(learning_rate=1e-5, warmup_steps=100, grad_accum=2))
  c.train.update(dict(steps=4000, batch_size=64, log_every=20, eval_every=500,
                      save_every=500, workdir="runs/pod_llama3_8b_rm"))
  c.dry_run = dry_run.section(command="train-rm", devices=32, memory_per_device_gib=95.0,
                              vocab_size=128_256, seq_len=2048)
  return c
