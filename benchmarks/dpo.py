"""DPO step throughput of rmjax against TRL's ``DPOTrainer``.

    python benchmarks/dpo.py [--shape s0|s1|s2] [--pairs 16 --rounds 3 --reps 5]

At ``--shape`` (``shapes.py``) a random float32 policy (and its frozen copy, the
reference); one step = ``--pairs`` pairs, each a prompt of ``--prompt-len`` tokens (default
seq / 2) and two responses of ``--response-len`` tokens (seq / 2), every token real; the
reference's log-probs computed in the step, the DPO loss, backward and AdamW. Ours:
``rmjax.rl.dpo.make_step`` jitted (policy and reference each one forward over the 2B
joined rows; the prompt is encoded once per side, not shared). The peer: ``DPOTrainer`` at
its defaults for this data (β 0.1, sigmoid loss, its reference model, chosen and rejected
concatenated into one forward, padding to the batch's longest), timed on_step_end to
on_step_end. Each round starts one fresh child per side, alternating; figures are medians
over the timed steps. The last stdout line is one JSON object with ``ratio`` (peer
seconds / ours per step).
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import harness
import numpy as np
import ppo as rl_bench  # benchmarks/ppo.py: the peer's model files and step timer
import shapes
from rm_train import build_tokenizer

FLAGS = (*shapes.FLAGS, "pairs", "prompt_len", "response_len", "reps", "warmup")
FIRST_ID = 2


def pair_ids(args, steps: int, vocab: int):
  """[steps * pairs, prompt], [.., response] x 2: the same random ids for both sides."""
  rng = np.random.default_rng(0)
  n = steps * args.pairs
  draw = lambda width: rng.integers(FIRST_ID, vocab, (n, width))
  return draw(args.prompt_len), draw(args.response_len), draw(args.response_len)


def run_ours(args) -> dict:
  import flax
  import jax
  import jax.numpy as jnp
  import ml_collections
  from flax import nnx

  from rmjax import parallel
  from rmjax.configs import dpo as dpo_config
  from rmjax.models.transformer import Transformer
  from rmjax.rl import dpo
  from rmjax.runtime.optim import make_optimizer

  if args.cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  steps = args.warmup + args.reps
  conf = dpo_config.get_config()
  mesh = parallel.make_mesh(parallel.MeshConfig(**conf.mesh))
  cfg = shapes.model_config(shapes.of(args))
  policy = parallel.init_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
  graphdef, reference = nnx.split(policy)
  tx = make_optimizer(ml_collections.ConfigDict(conf.optim), steps)
  params = jax.tree.map(jnp.copy, reference)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  step = jax.jit(dpo.make_step(graphdef, tx, conf.dpo), donate_argnums=(0,))
  prompts, chosen, rejected = pair_ids(args, steps, cfg.vocab_size)
  width = args.prompt_len + args.response_len
  times, cpu = [], []
  for i in range(steps):
    rows = slice(i * args.pairs, (i + 1) * args.pairs)
    batch = {"chosen_tokens": np.concatenate([prompts[rows], chosen[rows]], 1).astype(np.int32),
             "rejected_tokens": np.concatenate([prompts[rows], rejected[rows]],
                                               1).astype(np.int32),
             "chosen_mask": np.ones((args.pairs, width), bool),
             "rejected_mask": np.ones((args.pairs, width), bool),
             "prompt_len": np.full(args.pairs, args.prompt_len, np.int32),
             "weight": np.ones(args.pairs, np.float32)}
    start, cpu_start = time.perf_counter(), time.process_time()
    state, metrics = step(state, reference, parallel.shard_batch(batch, mesh))
    metrics = jax.device_get(metrics)
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - cpu_start)
    assert np.isfinite(metrics["loss"])
  return dict(step_s=times[args.warmup:], cpu_s=cpu[args.warmup:], first_step_s=times[0],
              peak_rss_mb=harness.peak_rss_mb(), jax=jax.__version__, flax=flax.__version__)


def run_peer(args) -> dict:
  import datasets
  import torch
  import transformers
  import trl
  from transformers import LlamaForCausalLM

  torch.set_num_threads(os.cpu_count())
  datasets.disable_progress_bars()
  steps = args.warmup + args.reps
  cfg = shapes.model_config(shapes.of(args))
  tokenizer = build_tokenizer(cfg.vocab_size)
  prompts, chosen, rejected = pair_ids(args, steps, len(tokenizer))
  text = lambda ids: " ".join(f"t{i}" for i in ids)
  data = datasets.Dataset.from_dict({
      "prompt": [text(p) + " " for p in prompts], "chosen": [text(c) for c in chosen],
      "rejected": [text(r) for r in rejected]})
  timer = rl_bench.StepTimer()
  with tempfile.TemporaryDirectory(prefix="rmjax-bench-dpo-") as out:
    torch.manual_seed(0)
    model = os.path.join(out, "policy")  # by path: TRL loads its reference from it
    LlamaForCausalLM(shapes.hf_config(cfg)).float().save_pretrained(model)
    tokenizer.save_pretrained(model)
    targs = trl.DPOConfig(
        output_dir=os.path.join(out, "run"), max_steps=steps,
        per_device_train_batch_size=args.pairs, gradient_accumulation_steps=1,
        learning_rate=1e-4, use_cpu=True, report_to=[], logging_strategy="no",
        save_strategy="no", eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=False, bf16=False, fp16=False, seed=0,
        max_length=args.prompt_len + args.response_len + 8)
    trainer = trl.DPOTrainer(model=model, args=targs, train_dataset=data,
                             processing_class=tokenizer, callbacks=[timer])
    assert trainer.ref_model is not None or getattr(trainer, "precompute_ref_log_probs", False)
    with contextlib.redirect_stdout(sys.stderr):
      trainer.train()
  assert len(timer.ends) == steps + 1, (len(timer.ends), steps)
  step_s = np.diff(timer.ends)
  return dict(step_s=step_s[args.warmup:].tolist(), cpu_s=np.diff(timer.cpu)[args.warmup:].tolist(),
              first_step_s=float(step_s[0]), peak_rss_mb=harness.peak_rss_mb(),
              torch=torch.__version__, transformers=transformers.__version__,
              trl=trl.__version__, loss_type=str(targs.loss_type), beta=targs.beta,
              attn_implementation=trainer.model.config._attn_implementation)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  shapes.add_flags(p)
  p.add_argument("--pairs", type=int, help="pairs per step (default: 16 at S0, scaled)")
  p.add_argument("--prompt-len", type=int, help="prompt tokens (default: seq / 2)")
  p.add_argument("--response-len", type=int, help="tokens of each response (default: seq / 2)")
  p.add_argument("--rounds", type=int, default=3, help="fresh child pairs, alternating")
  p.add_argument("--reps", type=int, default=5, help="timed steps per child")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
  p.add_argument("--side", choices=harness.SIDES, help=argparse.SUPPRESS)
  p.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  shape = shapes.resolve(args)
  args.pairs = args.pairs or shapes.rows(16, shape)
  args.prompt_len = args.prompt_len or shape.seq // 2
  args.response_len = args.response_len or shape.seq // 2
  if args.side:
    print(json.dumps((run_ours if args.side == "ours" else run_peer)(args)), flush=True)
    return
  quiet, start = harness.warn_if_busy(), time.perf_counter()
  runs = harness.alternating_rounds(
      os.path.abspath(__file__), args, FLAGS,
      lambda r: f"steps {[round(t, 3) for t in r['step_s']]} s")
  ours, peer = (harness.median_over(runs, s, "step_s") for s in harness.SIDES)
  print(json.dumps(dict(
      ratio=peer / ours, pairs_per_s=args.pairs / ours, peer_pairs_per_s=args.pairs / peer,
      median_step_s=dict(ours=ours, peer=peer),
      ratio_cpu_time=harness.median_over(runs, "peer", "cpu_s")
      / harness.median_over(runs, "ours", "cpu_s"),
      step_s={s: [round(t, 4) for c in runs[s] for t in c["step_s"]] for s in runs},
      peak_rss_mb={s: max(c["peak_rss_mb"] for c in runs[s]) for s in runs},
      peer_loss_type=runs["peer"][-1]["loss_type"], peer_beta=runs["peer"][-1]["beta"],
      peer_attn=runs["peer"][-1]["attn_implementation"], trl=runs["peer"][-1]["trl"],
      shape=dict(shapes.describe(shape), pairs=args.pairs, prompt_len=args.prompt_len,
                 response_len=args.response_len, dtype="float32"),
      timed_steps=args.rounds * args.reps, warmup_steps=args.warmup,
      counted=("one step: reference log-probs, policy forward of chosen and rejected, DPO "
               "loss, backward, AdamW; ours jitted make_step on joined rows, peer "
               "DPOTrainer on_step_end to on_step_end"),
      quiet_before=quiet, wall_s=time.perf_counter() - start)))


if __name__ == "__main__":
  main()
