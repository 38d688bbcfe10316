"""What a K-member reward-model ensemble costs: one training step and best-of-n scoring.

    python benchmarks/ensemble.py [--k 5 --pairs 16 --seq 128 --rounds 3 --windows 2]

Shape S0 (``rmjax.models.config.s0()``, float32) trained with the trainer's own step
(``rm_step.make_train_step`` + ``parallel.compile_step``, AdamW). Three variants, each in
its own fresh subprocess, rounds alternating their order (``harness.py``):
  * ``single``: one reward model;
  * ``separate``: K full members stacked in one program (``ensemble.Layout(k=K)``; how
    they run, batched or one after another, is ``--vectorize``);
  * ``shared``: one backbone with K reward heads (``Layout(k=K, shared_backbone=True)``).
Every member gets the same batch of ``--pairs`` pairs of ``--seq`` random tokens per side
(training itself gives each member its own data order; the cost is the same). A child warms
up (compilation excluded), then times ``--windows`` windows of ``--window-steps`` steps;
figures are medians over all timed windows of a variant. Each child then times scoring:
``ensemble.RewardEnsemble`` on ``--score-batch`` sequences of ``--seq`` tokens, all K
member rewards per sequence, as best-of-n scores its samples (median of ``--score-reps``).
The last line of stdout is one JSON object; progress goes to stderr.
"""

import argparse
import json
import os
import statistics
import sys
import time

import harness  # benchmarks/harness.py (this script's folder is on sys.path)
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("single", "separate", "shared")


def run_variant(args) -> dict:
  sys.path.insert(0, ROOT)
  import jax
  import jax.numpy as jnp
  import ml_collections
  from flax import nnx

  from rmjax import parallel
  from rmjax.data import schema
  from rmjax.models import config
  from rmjax.models.transformer import Transformer
  from rmjax.rm import members as ensemble
  from rmjax.rm.step import make_train_step
  from rmjax.runtime.optim import make_optimizer

  if args.cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  layout = {"single": ensemble.Layout(),
            "separate": ensemble.Layout(k=args.k, vectorize=args.vectorize),
            "shared": ensemble.Layout(k=args.k, shared_backbone=True)}[args.side]
  cfg = config.s0(num_reward_heads=layout.heads, lm_head=False)
  mesh = parallel.make_mesh()
  make_member = lambda rngs: Transformer(cfg, rngs=rngs)
  if layout.stacked:
    graphdef, params = ensemble.init_stacked(make_member, ensemble.member_seeds(0, args.k), mesh)
  else:
    graphdef, params = nnx.split(parallel.init_sharded(lambda: make_member(nnx.Rngs(0)), mesh))
  steps = args.warmup + args.windows * args.window_steps
  tx = make_optimizer(ml_collections.ConfigDict(dict(
      learning_rate=1e-5, warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.999, clip_norm=1.0,
      grad_accum=1)), steps)
  opt_init = jax.vmap(tx.init) if layout.stacked else tx.init
  state = {"params": params, "opt_state": opt_init(params), "step": jnp.zeros((), jnp.int32)}
  shardings = parallel.tree_shardings(state, mesh)
  state = jax.device_put(state, shardings)
  rng = np.random.default_rng(0)
  tokens = lambda rows: rng.integers(1, cfg.vocab_size, (rows, args.seq), dtype=np.int32)
  ones = np.ones((args.pairs, args.seq), bool)
  batch = {schema.CHOSEN_TOKENS: tokens(args.pairs), schema.CHOSEN_MASK: ones,
           schema.REJECTED_TOKENS: tokens(args.pairs), schema.REJECTED_MASK: ones,
           schema.MARGIN: np.zeros(args.pairs, np.float32),
           schema.WEIGHT: np.ones(args.pairs, np.float32)}
  if layout.stacked:  # member-major [K, B, ...]: the same pairs for every member
    batch = {key: np.stack([value] * args.k) for key, value in batch.items()}
  loss_cfg = ml_collections.ConfigDict(dict(
      label_smoothing=0.0, center_coef=0.0, score_reg_coef=0.0, use_margin=False))
  train_step = parallel.compile_step(
      make_train_step(graphdef, tx, loss_cfg, layout), mesh, shardings,
      {key: value.ndim for key, value in batch.items()}, members=layout.stacked)

  def one():
    nonlocal state
    state, metrics = train_step(state, parallel.shard_batch(batch, mesh,
                                                            members=layout.stacked))
    loss = float(jax.device_get(metrics["loss"]))
    assert np.isfinite(loss), loss

  for _ in range(args.warmup):
    one()
  windows = []
  for _ in range(args.windows):
    start = time.perf_counter()
    for _ in range(args.window_steps):
      one()
    windows.append(time.perf_counter() - start)

  scorer = ensemble.RewardEnsemble(graphdef, state["params"], layout, cfg)
  score_tokens = jnp.asarray(tokens(args.score_batch))
  score_mask = jnp.ones(score_tokens.shape, bool)
  assert scorer(score_tokens, score_mask).shape == (args.score_batch, layout.k)  # compiles
  score_s = []
  for _ in range(args.score_reps):
    start = time.perf_counter()
    jax.block_until_ready(scorer(score_tokens, score_mask))
    score_s.append(time.perf_counter() - start)
  return dict(window_s=windows, score_s=score_s, k=layout.k,
              params=sum(x.size for x in jax.tree.leaves(state["params"])))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--k", type=int, default=5, help="ensemble members")
  p.add_argument("--pairs", type=int, default=16, help="preference pairs per step")
  p.add_argument("--seq", type=int, default=128, help="tokens per side (all real)")
  p.add_argument("--rounds", type=int, default=3, help="fresh children per variant")
  p.add_argument("--windows", type=int, default=2, help="timed windows per child")
  p.add_argument("--window-steps", type=int, default=3, help="training steps per window")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 2)")
  p.add_argument("--score-batch", type=int, default=256, help="sequences per scoring call")
  p.add_argument("--score-reps", type=int, default=5, help="timed scoring calls per child")
  p.add_argument("--vectorize", choices=("auto", "vmap", "map"), default="auto",
                 help="how separate members run (ensemble.Layout.vectorize)")
  p.add_argument("--side", choices=VARIANTS, help=argparse.SUPPRESS)
  p.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.side:
    print(json.dumps(run_variant(args)), flush=True)
    return
  if args.rounds * args.windows < 5:
    p.error("need at least five timed windows per variant (rounds x windows >= 5)")
  if args.warmup < 2:
    p.error("--warmup must be >= 2 (the first two steps compile)")
  start = time.perf_counter()
  runs = harness.alternating_rounds(
      os.path.abspath(__file__), args,
      ("k", "pairs", "seq", "warmup", "windows", "window_steps", "score_batch", "score_reps",
       "vectorize"),
      lambda r: f"step {statistics.median(r['window_s']) / args.window_steps:.3f} s, "
                f"scoring {statistics.median(r['score_s']):.3f} s",
      sides=VARIANTS)
  step_s = {v: harness.median_over(runs, v, "window_s") / args.window_steps for v in VARIANTS}
  score_s = {v: harness.median_over(runs, v, "score_s") for v in VARIANTS}
  print(json.dumps(dict(
      k=args.k, vectorize=args.vectorize, single_step_s=step_s["single"],
      separate_step_s=step_s["separate"], shared_step_s=step_s["shared"],
      cost_ratio_separate=step_s["separate"] / step_s["single"],
      cost_ratio_shared=step_s["shared"] / step_s["single"],
      scoring_sequences_per_s={v: args.score_batch / score_s[v] for v in VARIANTS},
      scoring_member_rewards_per_s={v: args.score_batch * runs[v][0]["k"] / score_s[v]
                                    for v in VARIANTS},
      params={v: runs[v][0]["params"] for v in VARIANTS},
      window_s={v: [round(t, 4) for c in runs[v] for t in c["window_s"]] for v in VARIANTS},
      shape=dict(config="s0", dtype="float32", pairs=args.pairs, seq=args.seq,
                 score_batch=args.score_batch),
      counted=(f"step: one optimizer update of every member on {args.pairs} pairs x "
               f"{args.seq} tokens per side, host batch placement and metric fetch included; "
               f"scoring: one call scoring {args.score_batch} sequences x {args.seq} tokens "
               f"with all members"),
      cpu_count=os.cpu_count(), load_avg_1min=os.getloadavg()[0],
      wall_s=time.perf_counter() - start)))


if __name__ == "__main__":
  main()
