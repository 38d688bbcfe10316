"""Sampling throughput of rmjax against Hugging Face ``generate``, plus reward-model forward.

    python benchmarks/generation.py [--batch 16 --prompt 64 --new 64 --rounds 3 --reps 2]

Shape S0 (``rmjax.models.config.s0()``), float32, temperature 1, no top-k/top-p, no early
stop. Each round starts one fresh child process per side (``--side ours`` / ``--side peer``),
alternating; a child warms up (compilation excluded), then times ``--reps`` repetitions and
prints one JSON line. The figures are medians over all timed repetitions of a side. The last
line of stdout is one JSON object; progress goes to stderr. See benchmarks/README.md.
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
  sys.path.insert(0, ROOT)
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rmjax.models import config, sampler, transformer

  if args.cache_dir:  # shared by the ours-children: only the first one compiles
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  cfg = config.s0()
  # Built under jit: one compiled program instead of many small eager ones.
  build = lambda c: nnx.jit(lambda: transformer.Transformer(c, rngs=nnx.Rngs(0)))()
  model = build(cfg)
  tokens = jnp.asarray(prompts(cfg.vocab_size, args.batch, args.prompt))
  sampling = sampler.SamplingConfig(max_new_tokens=args.new, temperature=1.0)
  seed = iter(range(10**6))

  def sample():
    out = sampler.generate(model, tokens, None, jax.random.key(next(seed)), sampling)
    out.tokens.block_until_ready()
    assert out.tokens.shape == (args.batch, args.new) and bool(out.mask.all()), "stopped early"

  sample()  # compile + warm-up
  sample_s = timed(sample, args.reps)

  # Float32 2048^3 matmul in the same process: the machine's practical matmul peak.
  n = 2048
  a, b = (jax.random.normal(k, (n, n), jnp.float32) for k in jax.random.split(jax.random.key(1)))
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  matmul_s = statistics.median(timed(lambda: matmul(a, b).block_until_ready(), 5))

  # Reward-model forward: backbone + scalar head read at the last real token.
  rm = build(cfg.replace(num_reward_heads=1, lm_head=False))
  graphdef, state = nnx.split(rm)

  @jax.jit
  def rewards(state, tokens, mask):
    m = nnx.merge(graphdef, state)
    hidden, _ = m(tokens, mask)
    return m.rewards(hidden, mask)

  rm_tokens = jnp.asarray(prompts(cfg.vocab_size, args.rm_batch, args.rm_seq))
  rm_mask = jnp.ones(rm_tokens.shape, bool)
  rewards(state, rm_tokens, rm_mask).block_until_ready()
  rm_s = timed(lambda: rewards(state, rm_tokens, rm_mask).block_until_ready(), args.reps + 2)

  dev = jax.devices()[0]
  return dict(times_s=sample_s, rm_times_s=rm_s, matmul_s=matmul_s,
              matmul_flops=2.0 * n**3, jax=jax.__version__,
              device=f"{dev.platform}: {dev.device_kind}", jax_devices=len(jax.devices()))


def run_peer(args) -> dict:
  import torch
  import transformers
  from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

  sys.path.insert(0, ROOT)
  from rmjax.models import config
  cfg = config.s0()
  torch.set_num_threads(os.cpu_count())  # default: physical cores; use every core
  hf_cfg = LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.kv_heads, head_dim=cfg.dim_per_head,
      max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
      rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
      hidden_act="silu", attention_bias=False, mlp_bias=False,
      bos_token_id=None, eos_token_id=None, pad_token_id=0)
  torch.manual_seed(0)
  model = LlamaForCausalLM(hf_cfg).float().eval()
  gen = lambda new: GenerationConfig(  # EOS disabled: exactly `new` tokens per row
      do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
      min_new_tokens=new, eos_token_id=None, pad_token_id=0)
  tokens = torch.from_numpy(prompts(cfg.vocab_size, args.batch, args.prompt).astype(np.int64))
  mask = torch.ones_like(tokens)
  seed = iter(range(10**6))

  def sample(new=args.new):
    torch.manual_seed(next(seed))
    with torch.inference_mode():
      out = model.generate(tokens, attention_mask=mask, generation_config=gen(new))
    assert out.shape == (args.batch, args.prompt + new), f"stopped early: {out.shape}"

  sample(8)  # warm-up (eager: nothing to compile, so a short run suffices)
  return dict(times_s=timed(sample, args.reps), torch=torch.__version__,
              transformers=transformers.__version__, torch_threads=torch.get_num_threads(),
              attn_implementation=model.config._attn_implementation)


def model_flops(args) -> tuple[float, str]:
  """Model FLOPs of one generate call and a description of what is counted."""
  sys.path.insert(0, ROOT)
  from rmjax.models import config
  c = config.s0()
  h, kv, d = c.n_heads, c.kv_heads, c.dim_per_head
  layer = c.d_model * (h + 2 * kv) * d + h * d * c.d_model + 3 * c.d_model * c.d_ff
  matmul = c.n_layers * layer + c.d_model * c.vocab_size  # + untied LM head
  total = args.prompt + args.new
  attn = 4 * h * d * c.n_layers * total * (total + 1) / 2  # causal: position p sees p+1 keys
  flops = args.batch * (2 * matmul * total + attn)
  counted = (f"per sequence: 2 x {matmul} matmul params (q,k,v,o, gate/up/down over "
             f"{c.n_layers} layers + LM head; embedding lookup, norms, RoPE, softmax and "
             f"sampling excluded) x {total} tokens (prompt + new, although prompt LM heads "
             f"but the last and the final token's forward are not needed) + causal "
             f"attention 4*heads*head_dim*(p+1) per token at position p per layer (QK^T and "
             f"PV; padded cache slots not counted); x batch {args.batch}; {flops:.4g} FLOPs "
             f"per generate call")
  return flops, counted


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--batch", type=int, default=16, help="sampled sequences")
  p.add_argument("--prompt", type=int, default=64, help="prompt tokens per sequence")
  p.add_argument("--new", type=int, default=64, help="new tokens per sequence")
  p.add_argument("--rounds", type=int, default=3, help="fresh child pairs, alternating")
  p.add_argument("--reps", type=int, default=2, help="timed repetitions per child")
  p.add_argument("--rm-batch", type=int, default=32, help="reward-model forward batch")
  p.add_argument("--rm-seq", type=int, default=128, help="reward-model forward length")
  p.add_argument("--side", choices=("ours", "peer"), help=argparse.SUPPRESS)
  p.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.side:
    print(json.dumps((run_ours if args.side == "ours" else run_peer)(args)), flush=True)
    return
  if args.rounds * args.reps < 5:
    p.error("need at least five timed repetitions per side (rounds x reps >= 5)")

  start, load_before = time.perf_counter(), os.getloadavg()[0]
  if load_before > 0.5 * os.cpu_count():  # torch's thread pool suffers most from sharing
    print(f"warning: 1-min load {load_before:.1f} on {os.cpu_count()} cores: other processes "
          "are running; the figures are preliminary", file=sys.stderr)
  runs = harness.alternating_rounds(
      os.path.abspath(__file__), args, ("batch", "prompt", "new", "reps", "rm_batch", "rm_seq"),
      lambda result: f"{[round(t, 4) for t in result['times_s']]} s")
  ours, peer = runs["ours"][-1], runs["peer"][-1]
  median = lambda key, side: harness.median_over(runs, side, key)
  ours_s, peer_s = median("times_s", "ours"), median("times_s", "peer")
  new_tokens = args.batch * args.new
  flops, counted = model_flops(args)
  peak = statistics.median(c["matmul_flops"] / c["matmul_s"] for c in runs["ours"])
  print(f"torch threads: {peer['torch_threads']}", file=sys.stderr)
  result = dict(
      tokens_per_s=new_tokens / ours_s, peer_tokens_per_s=new_tokens / peer_s,
      ratio=peer_s / ours_s, pct_of_matmul_peak=100.0 * flops / ours_s / peak,
      model_gflops_per_s=flops / ours_s / 1e9, matmul_peak_gflops_per_s=peak / 1e9,
      rm_forward_tokens_per_s=args.rm_batch * args.rm_seq / median("rm_times_s", "ours"),
      median_s=dict(ours=ours_s, peer=peer_s), timed_reps=args.rounds * args.reps,
      min_s={side: min(t for c in runs[side] for t in c["times_s"]) for side in runs},
      times_s={side: [round(t, 4) for c in runs[side] for t in c["times_s"]] for side in runs},
      shape=dict(config="s0", dtype="float32", batch=args.batch, prompt=args.prompt,
                 new=args.new, rm_batch=args.rm_batch, rm_seq=args.rm_seq),
      counted=counted, peer=f"transformers LlamaForCausalLM.generate (do_sample, top_k=0, "
      f"top_p=1.0, eos None, attn={peer['attn_implementation']})",
      jax=ours["jax"], torch=peer["torch"], transformers=peer["transformers"],
      torch_threads=peer["torch_threads"], cpu_count=os.cpu_count(), device=ours["device"],
      load_avg_1min=dict(before=load_before, after=os.getloadavg()[0]),
      wall_s=time.perf_counter() - start)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
