"""Bradley–Terry reward-model training throughput of rmjax against TRL's ``RewardTrainer``.

    python benchmarks/rm_train.py [--pairs 16 --seq 128 --rounds 3 --windows 2 --window-steps 5]

Shape S0 (``rmjax.models.config.s0()``) with one reward head and no LM head, float32,
AdamW (lr 1e-5, weight decay 0, b2 0.999, global-norm clip 1.0, no accumulation), batches
of ``--pairs`` preference pairs of ``--seq`` real tokens per side (random ids). Each round
starts one fresh child process per side (``--side ours`` / ``--side peer``), alternating;
a child warms up (compilation excluded), then times ``--windows`` windows of
``--window-steps`` training steps and prints one JSON line. The figures are medians over
all timed windows of a side. The last line of stdout is one JSON object; progress goes to
stderr. ``--profile`` instead traces our step with ``jax.profiler`` and prints where its
time goes. See benchmarks/README.md.
"""

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time

import harness  # benchmarks/harness.py (this script's folder is on sys.path)
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR, B2, CLIP = 1e-5, 0.999, 1.0  # the peer's Trainer defaults for b2 and max_grad_norm


def pairs(vocab: int, rows: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
  """The same random (chosen, rejected) token ids [rows, seq] int32 for both sides.

  Ids are drawn from [1, vocab): id 0 is the peer's pad token, which its sequence
  classifier would skip when looking for the last real token.
  """
  rng = np.random.default_rng(0)
  return (rng.integers(1, vocab, (rows, seq), dtype=np.int32),
          rng.integers(1, vocab, (rows, seq), dtype=np.int32))


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_busy_pct(seconds: float = 5.0) -> float | None:
  """Share of all cores busy over ``seconds`` (Linux /proc/stat), i.e. other processes
  while this one sleeps; None where /proc/stat is missing."""
  def sample():
    with open("/proc/stat") as f:
      ticks = [int(x) for x in f.readline().split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait
  try:
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
  except OSError:
    return None
  return 100.0 * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def total_steps(args) -> int:
  return args.warmup + args.windows * args.window_steps


def run_ours(args) -> dict:
  sys.path.insert(0, ROOT)
  import flax
  import jax
  import jax.numpy as jnp
  import ml_collections
  import optax
  from flax import nnx

  from rmjax import parallel
  from rmjax.data import schema
  from rmjax.data.array_source import ArraySource
  from rmjax.models import config
  from rmjax.models.transformer import Transformer
  from rmjax.rm.step import make_train_step
  from rmjax.runtime.optim import make_optimizer

  if args.cache_dir:  # shared by the ours-children: only the first one compiles
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  steps = total_steps(args)
  cfg = config.s0(num_reward_heads=1, lm_head=False)
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
  chosen, rejected = pairs(cfg.vocab_size, args.pairs * steps, args.seq)
  ones = np.ones(chosen.shape, bool)
  source = ArraySource({schema.CHOSEN_TOKENS: chosen, schema.CHOSEN_MASK: ones,
                        schema.REJECTED_TOKENS: rejected, schema.REJECTED_MASK: ones,
                        schema.MARGIN: np.zeros(len(chosen), np.float32),
                        schema.WEIGHT: np.ones(len(chosen), np.float32)},
                       args.pairs, seed=0)
  batch_ndims = {k: v.ndim for k, v in source.batch(0).items()}
  train_step = parallel.compile_step(make_train_step(graphdef, tx, loss_cfg), mesh,
                                     shardings, batch_ndims)

  def one(step):  # one iteration of the trainer's loop, less logging and checkpoints
    nonlocal state
    state, metrics = train_step(state, parallel.shard_batch(source.batch(step), mesh))
    metrics = jax.device_get(metrics)
    assert np.isfinite(metrics["loss"]), f"non-finite loss at step {step}"
    return metrics

  start = time.perf_counter()
  one(0)  # compiles (or loads from the shared cache)
  first_s = time.perf_counter() - start
  # Step 2 compiles once more, as in rm_trainer: the initial step counter is not yet
  # placed on the mesh, the one the first step returns is (hence --warmup >= 2).
  for step in range(1, args.warmup):
    one(step)
  windows, step = [], args.warmup
  for _ in range(args.windows):
    start = time.perf_counter()
    for _ in range(args.window_steps):
      metrics = one(step)
      step += 1
    windows.append(time.perf_counter() - start)
  assert int(state["step"]) == steps
  extra = {}
  if args.profile:
    hlo = train_step.lower(state, parallel.shard_batch(source.batch(step), mesh)).compile()
    extra["profile"] = profile(lambda i: one(step + i), hlo.as_text(), args.window_steps)
  dev = jax.devices()[0]
  return dict(**extra, window_s=windows, first_step_s=first_s, final_loss=float(metrics["loss"]),
              params=sum(x.size for x in jax.tree.leaves(params)), peak_rss_mb=peak_rss_mb(),
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
  """A 512-token WordLevel tokenizer built in memory (no downloads)."""
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
  from transformers import LlamaConfig, LlamaForSequenceClassification, TrainerCallback

  sys.path.insert(0, ROOT)
  from rmjax.models import config
  cfg = config.s0()
  torch.set_num_threads(os.cpu_count())  # default: physical cores; use every core
  datasets.disable_progress_bars()
  steps = total_steps(args)
  tokenizer = build_tokenizer(cfg.vocab_size)
  assert len(tokenizer) == cfg.vocab_size and tokenizer.pad_token_id == 0
  hf_cfg = LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.kv_heads, head_dim=cfg.dim_per_head,
      max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
      rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
      hidden_act="silu", attention_bias=False, mlp_bias=False, num_labels=1,
      bos_token_id=None, eos_token_id=1, pad_token_id=0)
  torch.manual_seed(0)
  model = LlamaForSequenceClassification(hf_cfg).float()
  chosen, rejected = pairs(cfg.vocab_size, args.pairs * steps, args.seq)
  # Pre-tokenised: TRL 1.x's RewardTrainer skips tokenisation when the dataset has
  # `chosen_ids` and `rejected_ids`; its collator pads and stacks chosen then rejected.
  data = datasets.Dataset.from_dict({"chosen_ids": chosen.tolist(),
                                     "rejected_ids": rejected.tolist()})

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
        bf16=False, fp16=False, seed=0, max_length=None)
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
              params=sum(p.numel() for p in model.parameters()), peak_rss_mb=peak_rss_mb(),
              torch=torch.__version__, transformers=transformers.__version__,
              trl=trl.__version__, accelerate=accelerate.__version__,
              datasets=datasets.__version__, torch_threads=timer.threads,
              optim=str(trainer.args.optim.value),
              lr_scheduler=str(trainer.args.lr_scheduler_type.value),
              attn_implementation=model.config._attn_implementation,
              device=str(trainer.args.device))


def train_flops(args) -> tuple[float, str]:
  """Model FLOPs of one training step (forward + backward) and what is counted."""
  sys.path.insert(0, ROOT)
  from rmjax.models import config
  c = config.s0()
  h, kv, d = c.n_heads, c.kv_heads, c.dim_per_head
  layer = c.d_model * (h + 2 * kv) * d + h * d * c.d_model + 3 * c.d_model * c.d_ff
  matmul = c.n_layers * layer
  rows, t = 2 * args.pairs, args.seq
  attn = 4 * h * d * c.n_layers * t * (t + 1) / 2  # causal: position p sees p+1 keys
  flops = 3 * rows * (2 * matmul * t + attn)  # backward = 2 x forward
  return flops, (f"3 x forward (backward = 2 x forward) of {rows} sequences x {t} tokens: "
                 f"2 x {matmul} matmul params (q,k,v,o, gate/up/down over {c.n_layers} "
                 f"layers) per token + causal attention 4*heads*head_dim*(p+1) per token "
                 f"per layer; embedding, norms, reward head and optimizer excluded; "
                 f"{flops:.4g} FLOPs per step")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--pairs", type=int, default=16, help="preference pairs per step")
  p.add_argument("--seq", type=int, default=128, help="tokens per side (all real)")
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
  if args.profile:
    args.windows, args.cache_dir = 1, ""
    print(json.dumps(run_ours(args)), flush=True)
    return
  if args.side:
    print(json.dumps((run_ours if args.side == "ours" else run_peer)(args)), flush=True)
    return
  if args.rounds * args.windows < 5:
    p.error("need at least five timed windows per side (rounds x windows >= 5)")

  load_before, busy_before = os.getloadavg()[0], cpu_busy_pct()
  start = time.perf_counter()
  # The load average lags (a job that just ended still shows), so judge by busy time.
  busy = busy_before if busy_before is not None else 100 * load_before / os.cpu_count()
  if busy > 10:
    print(f"warning: CPUs {busy:.0f}% busy before the run (1-min load {load_before:.1f} on "
          f"{os.cpu_count()} cores): other processes are running; the figures are "
          "preliminary", file=sys.stderr)
  runs = harness.alternating_rounds(
      os.path.abspath(__file__), args, ("pairs", "seq", "warmup", "windows", "window_steps"),
      lambda result: f"windows of {args.window_steps} steps "
                     f"{[round(t, 3) for t in result['window_s']]} s")
  ours, peer = runs["ours"][-1], runs["peer"][-1]
  median = lambda key, side: harness.median_over(runs, side, key)
  ours_s, peer_s = median("window_s", "ours"), median("window_s", "peer")
  step_tokens = 2 * args.pairs * args.seq
  window_tokens = step_tokens * args.window_steps
  flops, counted_flops = train_flops(args)
  load_after, wall_s = os.getloadavg()[0], time.perf_counter() - start
  busy_after = cpu_busy_pct()
  result = dict(
      tokens_per_s=window_tokens / ours_s, peer_tokens_per_s=window_tokens / peer_s,
      ratio=peer_s / ours_s,
      peer_step_only_tokens_per_s=window_tokens / median("step_only_s", "peer"),
      steps_per_s=dict(ours=args.window_steps / ours_s, peer=args.window_steps / peer_s),
      model_gflops_per_s=dict(ours=flops * args.window_steps / ours_s / 1e9,
                              peer=flops * args.window_steps / peer_s / 1e9),
      peak_rss_mb=max(c["peak_rss_mb"] for c in runs["ours"]),
      peer_peak_rss_mb=max(c["peak_rss_mb"] for c in runs["peer"]),
      median_window_s=dict(ours=ours_s, peer=peer_s),
      window_s={side: [round(t, 4) for c in runs[side] for t in c["window_s"]] for side in runs},
      timed_windows=args.rounds * args.windows, window_steps=args.window_steps,
      warmup_steps=args.warmup,
      first_step_s={side: [round(c["first_step_s"], 3) for c in runs[side]] for side in runs},
      params=dict(ours=ours["params"], peer=peer["params"]),
      loss=dict(ours_last_step=ours["final_loss"], peer_mean_over_run=peer["final_loss"]),
      shape=dict(config="s0", dtype="float32", num_reward_heads=1, lm_head=False,
                 pairs=args.pairs, seq=args.seq),
      counted=(f"tokens = every chosen and rejected token processed forward and backward: "
               f"2 x {args.pairs} pairs x {args.seq} tokens = {step_tokens} per step, all "
               f"real; a window is {args.window_steps} consecutive steps after "
               f"{args.warmup} warm-up steps. Ours: the rm_trainer loop body (host batch from "
               f"ArraySource -> shard_batch -> compiled step -> device_get metrics, NaN check). "
               f"Peer: from on_step_end of the step before the window to on_step_end of its "
               f"last step (data loading, collation, forward, backward, clipping, AdamW, "
               f"scheduler, TRL's per-step metrics)"),
      counted_flops=counted_flops,
      ours="rmjax.rm.step.make_train_step + parallel.compile_step (jit, donated "
           "state), make_optimizer (AdamW lr 1e-5, wd 0, b2 0.999, clip 1.0, cosine decay)",
      peer=(f"trl.RewardTrainer on transformers LlamaForSequenceClassification(num_labels=1) "
            f"(attn={peer['attn_implementation']}, optim={peer['optim']}, lr 1e-5, wd 0, "
            f"clip 1.0, scheduler={peer['lr_scheduler']}, device {peer['device']})"),
      jax=ours["jax"], flax=ours["flax"], optax=ours["optax"], torch=peer["torch"],
      transformers=peer["transformers"], trl=peer["trl"], accelerate=peer["accelerate"],
      datasets=peer["datasets"], torch_threads=peer["torch_threads"],
      cpu_count=os.cpu_count(), device=ours["device"], jax_devices=ours["jax_devices"],
      load_avg_1min=dict(before=load_before, after=load_after),
      cpu_busy_pct_idle_5s=dict(before=busy_before, after=busy_after),
      wall_s=wall_s)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
