"""Sampling throughput of rmjax against Hugging Face ``generate``, plus reward-model forward.

    python benchmarks/generation.py [--shape s0|s1|s2] [--samples-per-prompt 4]
                                    [--dtype bfloat16] [--rounds 3 --reps 2]

At ``--shape`` (``shapes.py``: S0 is vocab 512, d 256, 4 layers; every number can be
overridden), half of ``--seq`` is prompt and half new tokens unless ``--prompt`` / ``--new``
say otherwise; ``--batch`` sequences (default: 16 at S0, scaled to the same tokens per
call), temperature 1, no top-k/top-p, no early stop. With ``--samples-per-prompt k`` the
batch is ``batch / k`` prompts sampled k times each: ours prefills each prompt once and
shares its KV cache, the peer's ``num_return_sequences`` encodes each copy. ``--dtype
bfloat16`` runs weights, activations and the KV cache of both sides in bfloat16.

Each round starts one fresh child process per side (``--side ours`` / ``--side peer``),
alternating; a child warms up (compilation excluded), then times ``--reps`` repetitions and
prints one JSON line. The figures are medians over all timed repetitions of a side. The last
line of stdout is one JSON object; progress goes to stderr. See benchmarks/README.md.
"""

import argparse
import json
import os
import statistics
import time

import harness  # benchmarks/harness.py (this script's folder is on sys.path)
import numpy as np
import shapes

FLAGS = (*shapes.FLAGS, "batch", "prompt", "new", "samples_per_prompt", "dtype", "reps",
         "rm_batch")


def prompts(vocab: int, batch: int, length: int) -> np.ndarray:
  """The same random prompts [batch, length] int32 for both sides."""
  return np.random.default_rng(0).integers(0, vocab, (batch, length), dtype=np.int32)


def timed(fn, reps: int) -> list[float]:
  """Wall seconds of each of ``reps`` calls of ``fn`` (which blocks until done)."""
  out = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)
  return out


def run_ours(args) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rmjax.models import sampler, transformer

  if args.cache_dir:  # shared by the ours-children: only the first one compiles
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  cfg = shapes.model_config(shapes.of(args), dtype=args.dtype, param_dtype=args.dtype)
  # Built under jit: one compiled program instead of many small eager ones.
  build = lambda c: nnx.jit(lambda: transformer.Transformer(c, rngs=nnx.Rngs(0)))()
  model = build(cfg)
  k = args.samples_per_prompt
  tokens = jnp.asarray(prompts(cfg.vocab_size, args.batch // k, args.prompt))
  sampling = sampler.SamplingConfig(max_new_tokens=args.new, temperature=1.0)
  seed = iter(range(10**6))

  def sample():
    out = sampler.generate(model, tokens, None, jax.random.key(next(seed)), sampling,
                           samples_per_prompt=k)
    out.tokens.block_until_ready()
    assert out.tokens.shape == (args.batch, args.new) and bool(out.mask.all()), "stopped early"

  sample()  # compile + warm-up
  sample_s = timed(sample, args.reps)

  # Reward-model forward: backbone + scalar head read at the last real token.
  rm = build(cfg.replace(num_reward_heads=1, lm_head=False))
  graphdef, state = nnx.split(rm)

  @jax.jit
  def rewards(state, tokens, mask):
    m = nnx.merge(graphdef, state)
    hidden, _ = m(tokens, mask)
    return m.rewards(hidden, mask)

  rm_tokens = jnp.asarray(prompts(cfg.vocab_size, args.rm_batch, args.seq))
  rm_mask = jnp.ones(rm_tokens.shape, bool)
  rewards(state, rm_tokens, rm_mask).block_until_ready()
  rm_s = timed(lambda: rewards(state, rm_tokens, rm_mask).block_until_ready(), args.reps + 2)

  dev = jax.devices()[0]
  return dict(times_s=sample_s, rm_times_s=rm_s, model_flops=model_flops(cfg, args)[0],
              new_tokens=args.batch * args.new, rm_tokens=args.rm_batch * args.seq,
              **harness.machine_limits(),
              peak_rss_mb=harness.peak_rss_mb(), jax=jax.__version__,
              device=f"{dev.platform}: {dev.device_kind}", jax_devices=len(jax.devices()))


def run_peer(args) -> dict:
  import torch
  import transformers
  from transformers import GenerationConfig, LlamaForCausalLM

  cfg = shapes.model_config(shapes.of(args))
  torch.set_num_threads(os.cpu_count())  # default: physical cores; use every core
  torch.manual_seed(0)
  model = LlamaForCausalLM(shapes.hf_config(cfg, eos_token_id=None)).eval()
  model = model.to(getattr(torch, args.dtype))
  k = args.samples_per_prompt
  gen = lambda new: GenerationConfig(  # EOS disabled: exactly `new` tokens per row
      do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
      min_new_tokens=new, eos_token_id=None, pad_token_id=0, num_return_sequences=k)
  tokens = torch.from_numpy(prompts(cfg.vocab_size, args.batch // k, args.prompt)
                            .astype(np.int64))
  mask = torch.ones_like(tokens)
  seed = iter(range(10**6))

  def sample(new=args.new):
    torch.manual_seed(next(seed))
    with torch.inference_mode():
      out = model.generate(tokens, attention_mask=mask, generation_config=gen(new))
    assert out.shape == (args.batch, args.prompt + new), f"stopped early: {out.shape}"

  sample(8)  # warm-up (eager: nothing to compile, so a short run suffices)
  return dict(times_s=timed(sample, args.reps), peak_rss_mb=harness.peak_rss_mb(),
              torch=torch.__version__, transformers=transformers.__version__,
              torch_threads=torch.get_num_threads(),
              attn_implementation=model.config._attn_implementation)


def model_flops(cfg, args) -> tuple[float, str]:
  """Model FLOPs of one generate call and a description of what is counted."""
  matmul = shapes.layer_matmul_params(cfg) + cfg.d_model * cfg.vocab_size  # + LM head
  total = args.prompt + args.new
  flops = args.batch * (2 * matmul * total + shapes.causal_attention_flops(cfg, total))
  counted = (f"per sequence: 2 x {matmul} matmul params (q,k,v,o, gate/up/down over "
             f"{cfg.n_layers} layers + LM head; embedding lookup, norms, RoPE, softmax and "
             f"sampling excluded) x {total} tokens (prompt + new, as if every sample encoded "
             f"its prompt) + causal attention 4*heads*head_dim*(p+1) per token at position "
             f"p per layer; x batch {args.batch}; {flops:.4g} FLOPs per generate call")
  return flops, counted


def decode_bytes(cfg, args) -> float:
  """Bytes a decode loop must read at least: every weight once per step, and at step t
  the KV cache of prompt + t tokens (the memory floor of decoding)."""
  width = 2 if args.dtype == "bfloat16" else 4
  weights = width * (shapes.layer_matmul_params(cfg) + cfg.d_model * cfg.vocab_size)
  per_token_cache = width * 2 * cfg.n_layers * cfg.kv_heads * cfg.dim_per_head * args.batch
  steps = args.new - 1
  cache = per_token_cache * (steps * args.prompt + steps * (steps + 1) / 2)
  return steps * weights + cache


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  shapes.add_flags(p)
  p.add_argument("--batch", type=int, help="sampled sequences (default: 16 at S0, scaled)")
  p.add_argument("--prompt", type=int, help="prompt tokens per sequence (default: seq / 2)")
  p.add_argument("--new", type=int, help="new tokens per sequence (default: seq / 2)")
  p.add_argument("--samples-per-prompt", type=int, default=1,
                 help="samples per prompt: batch / k prompts, each sampled k times")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--rounds", type=int, default=3, help="fresh child pairs, alternating")
  p.add_argument("--reps", type=int, default=2, help="timed repetitions per child")
  p.add_argument("--rm-batch", type=int, help="reward-model forward batch of seq tokens "
                 "(default: 32 at S0, scaled)")
  p.add_argument("--side", choices=("ours", "peer"), help=argparse.SUPPRESS)
  p.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  shape = shapes.resolve(args)
  args.batch = args.batch or shapes.rows(16, shape)
  args.rm_batch = args.rm_batch or shapes.rows(32, shape)
  args.prompt = args.prompt or shape.seq // 2
  args.new = args.new or shape.seq - shape.seq // 2
  if args.side:
    print(json.dumps((run_ours if args.side == "ours" else run_peer)(args)), flush=True)
    return
  if args.batch % args.samples_per_prompt:
    p.error(f"--batch {args.batch} is not a multiple of --samples-per-prompt "
            f"{args.samples_per_prompt}")
  if args.rounds * args.reps < 5:
    p.error("need at least five timed repetitions per side (rounds x reps >= 5)")

  start, quiet = time.perf_counter(), harness.warn_if_busy()
  runs = harness.alternating_rounds(
      os.path.abspath(__file__), args, FLAGS,
      lambda result: f"{[round(t, 4) for t in result['times_s']]} s")
  ours, peer = runs["ours"][-1], runs["peer"][-1]
  median = lambda key, side: harness.median_over(runs, side, key)
  ours_s, peer_s = median("times_s", "ours"), median("times_s", "peer")
  new_tokens = args.batch * args.new
  cfg = shapes.model_config(shape)
  flops, counted = model_flops(cfg, args)
  peak = statistics.median(c["matmul_flops_per_s"] for c in runs["ours"])
  bandwidth = statistics.median(c["memory_bytes_per_s"] for c in runs["ours"])
  result = dict(
      tokens_per_s=new_tokens / ours_s, peer_tokens_per_s=new_tokens / peer_s,
      ratio=peer_s / ours_s, pct_of_matmul_peak=100.0 * flops / ours_s / peak,
      pct_of_memory_bandwidth=100.0 * decode_bytes(cfg, args) / ours_s / bandwidth,
      model_gflops_per_s=flops / ours_s / 1e9, matmul_peak_gflops_per_s=peak / 1e9,
      memory_bandwidth_gb_per_s=bandwidth / 1e9,
      rm_forward_tokens_per_s=args.rm_batch * args.seq / median("rm_times_s", "ours"),
      peak_rss_mb={side: max(c["peak_rss_mb"] for c in runs[side]) for side in runs},
      median_s=dict(ours=ours_s, peer=peer_s), timed_reps=args.rounds * args.reps,
      min_s={side: min(t for c in runs[side] for t in c["times_s"]) for side in runs},
      times_s={side: [round(t, 4) for c in runs[side] for t in c["times_s"]] for side in runs},
      shape=dict(shapes.describe(shape), dtype=args.dtype, batch=args.batch,
                 samples_per_prompt=args.samples_per_prompt, prompt=args.prompt,
                 new=args.new, rm_batch=args.rm_batch),
      counted=counted, counted_bandwidth="decode floor: all weights per step + the KV cache "
      "up to that step, over the whole generate call's time",
      peer=f"transformers LlamaForCausalLM.generate (do_sample, top_k=0, top_p=1.0, eos "
      f"None, num_return_sequences={args.samples_per_prompt}, "
      f"attn={peer['attn_implementation']})",
      jax=ours["jax"], torch=peer["torch"], transformers=peer["transformers"],
      torch_threads=peer["torch_threads"], cpu_count=os.cpu_count(), device=ours["device"],
      quiet_before=quiet, load_avg_1min_after=os.getloadavg()[0],
      wall_s=time.perf_counter() - start)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
