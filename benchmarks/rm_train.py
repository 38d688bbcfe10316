"""Bradley–Terry reward-model training throughput of rmjax against TRL's ``RewardTrainer``.

    python benchmarks/rm_train.py [--shape s0|s1|s2] [--workload random|hh]
                                  [--rounds 3 --windows 2 --window-steps 5]

At ``--shape`` (``shapes.py``; every number can be overridden) with one reward head and no
LM head, float32, AdamW (lr 1e-5, weight decay 0, b2 0.999, global-norm clip 1.0, no
accumulation), batches of ``--pairs`` preference pairs (default: 16 at S0, scaled to the same
tokens per step). Two workloads:
  * ``random``: every side ``--seq`` real random tokens, no prompt shared;
  * ``hh``: prompt, chosen and rejected lengths from ``data/hh_lengths.csv`` (measured on
    HH-RLHF by ``hh_lengths.py``), cut to ``--seq`` per side (responses to 3/4 of it) as the
    trainer cuts them, random ids. Ours packs each pair as [prompt | chosen | rejected] in
    one row, each batch as wide as its longest pair rounded up to 64 (the trainer's
    shared-prompt encoding with buckets); TRL pads each batch to its longest sequence (its
    default collator). Both read the same batches in the same order.
Each round starts one fresh child process per side (``--side ours`` / ``--side peer``),
alternating; a child warms up (compilation excluded: ours runs one step at every bucket
width first), then times ``--windows`` windows of ``--window-steps`` training steps and
prints one JSON line. The figures are medians over all timed windows of a side. The last
line of stdout is one JSON object; progress goes to stderr. ``--profile`` instead traces
our step with ``jax.profiler`` and prints where its time goes. See benchmarks/README.md.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import harness  # benchmarks/harness.py (this script's folder is on sys.path)
import numpy as np
import shapes

LR, B2, CLIP = 1e-5, 0.999, 1.0  # the peer's Trainer defaults for b2 and max_grad_norm
HH_LENGTHS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hh_lengths.csv")
FLAGS = (*shapes.FLAGS, "workload", "pairs", "warmup", "windows", "window_steps")


def total_steps(args) -> int:
  return args.warmup + args.windows * args.window_steps


def max_response_len(seq: int) -> int:
  """The response cap of the hh workload: 3/4 of a side (192 of 256 in the experiment)."""
  return 3 * seq // 4


def workload_pairs(args) -> dict[str, np.ndarray]:
  """The same pairs for both sides: joined-sequence arrays [rows, seq] (right-padded, with
  "prompt_len"), rows = pairs x steps, batch b being rows [b * pairs, (b + 1) * pairs).

  Ids are drawn from [1, vocab): id 0 is the peer's pad token, which its sequence
  classifier would skip when looking for the last real token.
  """
  from rmjax.data import pipeline
  rows, seq, rng = args.pairs * total_steps(args), args.seq, np.random.default_rng(0)
  ids = lambda n: rng.integers(1, args.vocab, n, dtype=np.int32)
  if args.workload == "random":
    lengths, cap = np.tile([[0, seq, seq]], (rows, 1)), seq
  else:
    cap = max_response_len(seq)
    table = np.loadtxt(HH_LENGTHS, dtype=np.int64, delimiter=",", ndmin=2)
    lengths = table[np.arange(rows) % len(table)]
  out = {k: np.zeros((rows, seq), np.int32) for k in ("chosen_tokens", "rejected_tokens")}
  out.update(chosen_mask=np.zeros((rows, seq), bool), rejected_mask=np.zeros((rows, seq), bool),
             prompt_len=np.zeros(rows, np.int32))
  for i, (p, c, r) in enumerate(lengths):
    prompt, chosen, rejected = pipeline.truncate_pair(ids(p), ids(c), ids(r), seq, cap)
    out["prompt_len"][i] = len(prompt)
    for side, response in (("chosen", chosen), ("rejected", rejected)):
      joined = np.concatenate([prompt, response])
      out[f"{side}_tokens"][i, :len(joined)] = joined
      out[f"{side}_mask"][i, :len(joined)] = True
  out["margin"], out["weight"] = np.zeros(rows, np.float32), np.ones(rows, np.float32)
  return out


def step_batches(arrays: dict[str, np.ndarray], args) -> list[dict]:
  """Our host batch of every step of ``workload_pairs``' arrays: plain pairs (random), or
  packed with a shared prompt into the batch's bucket width (hh)."""
  from rmjax.data import shared_prompt
  batches = [{k: v[b * args.pairs:(b + 1) * args.pairs] for k, v in arrays.items()}
             for b in range(total_steps(args))]
  if args.workload == "random":
    return [{k: v for k, v in b.items() if k != "prompt_len"} for b in batches]
  width = shared_prompt.truncated_width(args.seq, max_response_len(args.seq))
  return [shared_prompt.pack(b, shared_prompt.bucket_width(b, width)) for b in batches]


def batch_width(batch: dict) -> int:
  """Positions per row of a host batch (every array of it is [pairs, width] or [pairs])."""
  return max(v.shape[1] for v in batch.values() if v.ndim == 2)


def real_tokens(arrays: dict[str, np.ndarray], args) -> float:
  """Real tokens per step as two joined sequences per pair (what the peer encodes, padding
  excluded), the mean over the run's steps: the throughput's numerator for both sides."""
  return float((arrays["chosen_mask"].sum() + arrays["rejected_mask"].sum())
               / total_steps(args))


def run_ours(args) -> dict:
  import flax
  import jax
  import jax.numpy as jnp
  import ml_collections
  import optax
  from flax import nnx

  from rmjax import parallel
  from rmjax.models.transformer import Transformer
  from rmjax.rm.step import make_train_step
  from rmjax.runtime.optim import make_optimizer

  if args.cache_dir:  # shared by the ours-children: only the first one compiles
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  arrays = workload_pairs(args)
  batches = step_batches(arrays, args)
  widths = sorted({batch_width(b) for b in batches})
  # One untimed step more per bucket width the warm-up steps do not reach.
  warm = {batch_width(b) for b in batches[:args.warmup]}
  unseen = {batch_width(b): b for b in batches[args.warmup:] if batch_width(b) not in warm}
  steps = total_steps(args) + len(unseen)
  cfg = shapes.model_config(shapes.of(args), num_reward_heads=1, lm_head=False)
  mesh = parallel.make_mesh()  # all devices on the data axis; one CPU device: 1x1x1
  model = parallel.init_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
  graphdef, params = nnx.split(model)
  optim = ml_collections.ConfigDict(dict(
      learning_rate=LR, warmup_steps=0, weight_decay=0.0, b1=0.9, b2=B2, clip_norm=CLIP,
      grad_accum=1))
  tx = make_optimizer(optim, steps)
  loss_cfg = ml_collections.ConfigDict(dict(
      label_smoothing=0.0, center_coef=0.0, score_reg_coef=0.0, use_margin=False))
  # As rmjax.rm.trainer.train sets the step up.
  opt_shardings = parallel.tree_shardings(jax.eval_shape(tx.init, params), mesh)
  state = {"params": params, "opt_state": jax.jit(tx.init, out_shardings=opt_shardings)(params),
           "step": jnp.zeros((), jnp.int32)}
  shardings = parallel.tree_shardings(state, mesh)
  batch_ndims = {k: v.ndim for k, v in batches[0].items()}
  train_step = parallel.compile_step(make_train_step(graphdef, tx, loss_cfg), mesh,
                                     shardings, batch_ndims)

  def one(batch, step):  # one iteration of the trainer's loop, less logging and checkpoints
    nonlocal state
    state, metrics = train_step(state, parallel.shard_batch(batch, mesh))
    metrics = jax.device_get(metrics)
    assert np.isfinite(metrics["loss"]), f"non-finite loss at step {step}"
    return metrics

  start = time.perf_counter()
  one(batches[0], 0)  # compiles (or loads from the shared cache)
  first_s = time.perf_counter() - start
  # Step 2 compiles once more, as in rm_trainer: the initial step counter is not yet
  # placed on the mesh, the one the first step returns is (hence --warmup >= 2).
  for step in range(1, args.warmup):
    one(batches[step], step)
  for batch in unseen.values():
    one(batch, -1)
  windows, step = [], args.warmup
  for _ in range(args.windows):
    start = time.perf_counter()
    for _ in range(args.window_steps):
      metrics = one(batches[step], step)
      step += 1
    windows.append(time.perf_counter() - start)
  assert int(state["step"]) == steps
  extra = {}
  if args.profile:
    batch = parallel.shard_batch(batches[-1], mesh)
    hlo = train_step.lower(state, batch).compile()
    extra["profile"] = profile(lambda i: one(batches[-1], i), hlo.as_text(), args.window_steps)
  dev = jax.devices()[0]
  return dict(**extra, window_s=windows, first_step_s=first_s, final_loss=float(metrics["loss"]),
              widths=widths, params=sum(x.size for x in jax.tree.leaves(params)),
              model_flops_per_step=train_flops(cfg, args)[0], step_tokens=real_tokens(arrays, args),
              window_steps=args.window_steps,
              peak_rss_mb=harness.peak_rss_mb(), **harness.machine_limits(),
              jax=jax.__version__, flax=flax.__version__, optax=optax.__version__,
              device=f"{dev.platform}: {dev.device_kind}", jax_devices=len(jax.devices()),
              mesh=dict(mesh.shape))


def op_kind(fusion: str, op: str) -> str:
  """The group of one compiled op, from its fusion name and JAX op_name metadata."""
  if "dot_general" in op and fusion.startswith(("ynn_fusion", "xnn_fusion", "dot")):
    part = "attention dots (QK^T, PV)" if ("bktd" in op) else "weight matmuls"
    return f"{part}, {'backward' if 'transpose(jvp' in op else 'forward'}"
  if "copy" in fusion or "transpose" in fusion or op.endswith(("/transpose", "/reshape")):
    return "layout copies and transposes"
  if op.endswith(("/pad", "/add_any", "/concatenate")) or "pad" in fusion or "concat" in fusion:
    return "pad / add_any / concatenate (slice gradients, RoPE halves)"
  return "elementwise and reductions (norms, softmax, SiLU, RoPE, loss, AdamW)"


def profile(run_step, hlo_text: str, steps: int) -> dict:
  """Trace ``steps`` calls of ``run_step(i)`` with jax.profiler; ms per step by op group.

  Ops are named after the compiled HLO instructions; their ``op_name`` metadata (the
  jaxpr path, ``transpose(...)`` for the backward pass) gives the group. XLA:CPU runs
  independent ops concurrently, so the groups add up to more than the traced wall time;
  ``ops_busy_ms`` is the time at least one op was running.
  """
  import collections
  import glob
  import gzip
  import re

  import jax
  names = dict(re.findall(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]+)"', hlo_text,
                          re.M)[::-1])  # first occurrence wins
  with tempfile.TemporaryDirectory(prefix="rmjax-rm-trace-") as trace_dir:
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    for i in range(steps):
      run_step(i)
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    path = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
    events = [e for e in json.load(gzip.open(path))["traceEvents"]
              if e.get("ph") == "X" and e.get("name") in names]
  groups = collections.Counter()
  for e in events:
    groups[op_kind(e["name"], names[e["name"]])] += e["dur"] / 1e3 / steps
  busy, end = 0.0, -1.0
  for t0, t1 in sorted((e["ts"], e["ts"] + e["dur"]) for e in events):
    busy += max(0.0, t1 - max(t0, end))
    end = max(end, t1)
  out = dict(traced_step_ms=1e3 * wall / steps, ops_busy_ms=busy / 1e3 / steps,
             ops_total_ms=sum(groups.values()),
             groups_ms={k: round(v, 1) for k, v in groups.most_common()})
  print(f"traced step {out['traced_step_ms']:.0f} ms, ops busy {out['ops_busy_ms']:.0f} ms, "
        f"op time summed over threads {out['ops_total_ms']:.0f} ms:", file=sys.stderr)
  for k, v in groups.most_common():
    print(f"  {v:7.1f} ms  {100 * v / out['ops_total_ms']:4.1f}%  {k}", file=sys.stderr)
  return out


def build_tokenizer(vocab: int):
  """A ``vocab``-token WordLevel tokenizer built in memory (no downloads)."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  words = {"<pad>": 0, "</s>": 1, **{f"t{i}": i for i in range(2, vocab)}}
  tok = Tokenizer(models.WordLevel(words, unk_token="</s>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                 unk_token="</s>")


def run_peer(args) -> dict:
  import accelerate
  import datasets
  import torch
  import transformers
  import trl
  from transformers import LlamaForSequenceClassification, TrainerCallback

  cfg = shapes.model_config(shapes.of(args))
  torch.set_num_threads(os.cpu_count())  # default: physical cores; use every core
  datasets.disable_progress_bars()
  steps = total_steps(args)
  tokenizer = build_tokenizer(cfg.vocab_size)
  assert len(tokenizer) == cfg.vocab_size and tokenizer.pad_token_id == 0
  torch.manual_seed(0)
  model = LlamaForSequenceClassification(shapes.hf_config(cfg, num_labels=1)).float()
  arrays = workload_pairs(args)
  # Pre-tokenised: TRL 1.x's RewardTrainer skips tokenisation when the dataset has
  # `chosen_ids` and `rejected_ids`; its collator pads and stacks chosen then rejected.
  ids = lambda side: [row[mask].tolist() for row, mask in
                      zip(arrays[f"{side}_tokens"], arrays[f"{side}_mask"])]
  data = datasets.Dataset.from_dict({"chosen_ids": ids("chosen"), "rejected_ids": ids("rejected")})

  class StepTimer(TrainerCallback):
    def __init__(self):
      self.begin, self.end, self.threads = [], [], None

    def on_train_begin(self, args_, state, control, **kwargs):
      self.threads = torch.get_num_threads()

    def on_step_begin(self, args_, state, control, **kwargs):
      self.begin.append(time.perf_counter())

    def on_step_end(self, args_, state, control, **kwargs):
      self.end.append(time.perf_counter())

  timer = StepTimer()
  with tempfile.TemporaryDirectory(prefix="rmjax-bench-trl-") as out:
    targs = trl.RewardConfig(
        output_dir=out, max_steps=steps, per_device_train_batch_size=args.pairs,
        gradient_accumulation_steps=1, learning_rate=LR, weight_decay=0.0, adam_beta2=B2,
        max_grad_norm=CLIP, warmup_steps=0, use_cpu=True, report_to=[],
        logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False,
        activation_checkpointing=False, gradient_checkpointing=False,  # TRL: True
        bf16=False, fp16=False, seed=0, max_length=None,
        train_sampling_strategy="sequential")  # our batches, in our order
    trainer = trl.RewardTrainer(model=model, args=targs, train_dataset=data,
                                processing_class=tokenizer, callbacks=[timer])
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints a summary dict
      result = trainer.train()
  assert not (model.is_activation_checkpointing or trainer.args.bf16 or trainer.args.fp16)
  assert next(model.parameters()).dtype == torch.float32
  assert len(timer.end) == steps, (len(timer.end), steps)
  # A window runs from the end of the step before it to the end of its last step, so it
  # holds everything the Trainer does per step (data loading and collation included);
  # `step_only_s` sums on_step_begin -> on_step_end of the same steps (no data loading).
  windows, step_only = [], []
  for w in range(args.windows):
    a = args.warmup + w * args.window_steps
    b = a + args.window_steps
    windows.append(timer.end[b - 1] - timer.end[a - 1])
    step_only.append(sum(timer.end[i] - timer.begin[i] for i in range(a, b)))
  return dict(window_s=windows, step_only_s=step_only,
              first_step_s=timer.end[0] - timer.begin[0], final_loss=result.training_loss,
              params=sum(p.numel() for p in model.parameters()),
              peak_rss_mb=harness.peak_rss_mb(),
              torch=torch.__version__, transformers=transformers.__version__,
              trl=trl.__version__, accelerate=accelerate.__version__,
              datasets=datasets.__version__, torch_threads=timer.threads,
              optim=str(trainer.args.optim.value),
              lr_scheduler=str(trainer.args.lr_scheduler_type.value),
              attn_implementation=model.config._attn_implementation,
              device=str(trainer.args.device))


def train_flops(cfg, args) -> tuple[float, str]:
  """Model FLOPs of one training step (forward + backward) and what is counted."""
  matmul = shapes.layer_matmul_params(cfg)
  rows, t = 2 * args.pairs, args.seq
  flops = 3 * rows * (2 * matmul * t + shapes.causal_attention_flops(cfg, t))
  return flops, (f"3 x forward (backward = 2 x forward) of {rows} sequences x {t} tokens "
                 f"(all real; the hh workload does less): 2 x {matmul} matmul params (q,k,v,"
                 f"o, gate/up/down over {cfg.n_layers} layers) per token + causal attention "
                 f"4*heads*head_dim*(p+1) per token per layer; embedding, norms, reward head "
                 f"and optimizer excluded; {flops:.4g} FLOPs per step")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  shapes.add_flags(p)
  p.add_argument("--workload", choices=("random", "hh"), default="random")
  p.add_argument("--pairs", type=int, help="preference pairs per step (default: 16 at S0, "
                 "scaled to the same tokens per step)")
  p.add_argument("--rounds", type=int, default=3, help="fresh child pairs, alternating")
  p.add_argument("--windows", type=int, default=2, help="timed windows per child")
  p.add_argument("--window-steps", type=int, default=5, help="training steps per window")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 2)")
  p.add_argument("--profile", action="store_true",
                 help="only ours, in this process: trace --window-steps steps after the "
                 "timed ones and print where a step's time goes")
  p.add_argument("--side", choices=("ours", "peer"), help=argparse.SUPPRESS)
  p.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.warmup < 2:
    p.error("--warmup must be >= 2 (the first two steps of ours compile)")
  shape = shapes.resolve(args)
  args.pairs = args.pairs or shapes.rows(16, shape)
  if args.side:
    print(json.dumps((run_ours if args.side == "ours" else run_peer)(args)), flush=True)
    return
  if args.profile:
    args.windows, args.cache_dir = 1, ""
    print(json.dumps(run_ours(args)), flush=True)
    return
  if args.rounds * args.windows < 5:
    p.error("need at least five timed windows per side (rounds x windows >= 5)")

  quiet, start = harness.warn_if_busy(), time.perf_counter()
  runs = harness.alternating_rounds(
      os.path.abspath(__file__), args, FLAGS,
      lambda result: f"windows of {args.window_steps} steps "
                     f"{[round(t, 3) for t in result['window_s']]} s")
  ours, peer = runs["ours"][-1], runs["peer"][-1]
  median = lambda key, side: harness.median_over(runs, side, key)
  ours_s, peer_s = median("window_s", "ours"), median("window_s", "peer")
  step_tokens = ours["step_tokens"]  # the same pairs on both sides (workload_pairs)
  window_tokens = step_tokens * args.window_steps
  cfg = shapes.model_config(shape)
  flops, counted_flops = train_flops(cfg, args)
  peak = statistics.median(c["matmul_flops_per_s"] for c in runs["ours"])
  gflops = {side: flops * args.window_steps / s / 1e9 for side, s in
            (("ours", ours_s), ("peer", peer_s))}
  result = dict(
      tokens_per_s=window_tokens / ours_s, peer_tokens_per_s=window_tokens / peer_s,
      ratio=peer_s / ours_s,
      pairs_per_s=dict(ours=args.pairs * args.window_steps / ours_s,
                       peer=args.pairs * args.window_steps / peer_s),
      peer_step_only_tokens_per_s=window_tokens / median("step_only_s", "peer"),
      steps_per_s=dict(ours=args.window_steps / ours_s, peer=args.window_steps / peer_s),
      matmul_peak_gflops_per_s=peak / 1e9,
      pct_of_matmul_peak=({side: 100 * g * 1e9 / peak for side, g in gflops.items()}
                          if args.workload == "random" else None),
      model_gflops_per_s=gflops if args.workload == "random" else None,
      peak_rss_mb={side: max(c["peak_rss_mb"] for c in runs[side]) for side in runs},
      median_window_s=dict(ours=ours_s, peer=peer_s),
      window_s={side: [round(t, 4) for c in runs[side] for t in c["window_s"]] for side in runs},
      timed_windows=args.rounds * args.windows, window_steps=args.window_steps,
      warmup_steps=args.warmup, ours_widths=ours["widths"],
      first_step_s={side: [round(c["first_step_s"], 3) for c in runs[side]] for side in runs},
      params=dict(ours=ours["params"], peer=peer["params"]),
      loss=dict(ours_last_step=ours["final_loss"], peer_mean_over_run=peer["final_loss"]),
      shape=dict(shapes.describe(shape), dtype="float32", num_reward_heads=1, lm_head=False,
                 pairs=args.pairs, workload=args.workload),
      counted=(f"tokens = the real tokens of each pair's two joined sequences (prompt + "
               f"response, twice the prompt), padding excluded, {step_tokens:.0f} per step "
               f"on average; a window is {args.window_steps} consecutive steps after "
               f"{args.warmup} warm-up steps. Ours: the rm_trainer loop body (host batch -> "
               f"shard_batch -> compiled step -> device_get metrics, NaN check). "
               f"Peer: from on_step_end of the step before the window to on_step_end of its "
               f"last step (data loading, collation, forward, backward, clipping, AdamW, "
               f"scheduler, TRL's per-step metrics)"),
      counted_flops=counted_flops,
      ours="rmjax.rm.step.make_train_step + parallel.compile_step (jit, donated "
           "state), make_optimizer (AdamW lr 1e-5, wd 0, b2 0.999, clip 1.0, cosine decay)"
           + (", shared-prompt packing in 64-wide buckets" if args.workload == "hh" else ""),
      peer=(f"trl.RewardTrainer on transformers LlamaForSequenceClassification(num_labels=1) "
            f"(attn={peer['attn_implementation']}, optim={peer['optim']}, lr 1e-5, wd 0, "
            f"clip 1.0, scheduler={peer['lr_scheduler']}, device {peer['device']}, "
            f"sequential sampler, default padding to the batch's longest)"),
      jax=ours["jax"], flax=ours["flax"], optax=ours["optax"], torch=peer["torch"],
      transformers=peer["transformers"], trl=peer["trl"], accelerate=peer["accelerate"],
      datasets=peer["datasets"], torch_threads=peer["torch_threads"],
      cpu_count=os.cpu_count(), device=ours["device"], jax_devices=ours["jax_devices"],
      quiet_before=quiet, cpu_busy_pct_5s_after=harness.cpu_busy_pct(),
      wall_s=time.perf_counter() - start)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
