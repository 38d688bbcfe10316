"""PPO iteration throughput of rmjax against TRL's ``RLOOTrainer`` (TRL 1.x has no PPO).

    python benchmarks/ppo.py [--shape s0|s1|s2] [--prompts 8 --samples 4 --rounds 3 --reps 2]

At ``--shape`` (``shapes.py``; every number can be overridden) for every model: policy,
reference, reward model (and, ours, the critic), float32, random init. One iteration =
``--prompts`` random prompts (default: 8 at S0, scaled to the same tokens per iteration) of
``--prompt-len`` tokens x ``--samples`` samples, exactly ``--new`` new tokens each (both
default to half of ``--seq``; EOS never stops a row), reward-model scoring, reference (and
critic) forward, and one epoch of updates as a single minibatch of all episodes. Ours:
``RLTrainer.rollout`` then its compiled update (actor and critic). The peer: one ``RLOOTrainer`` step
(generation, old/reference log-probs, reward model, one backward and AdamW step).
Each round starts one fresh child per side (``--side ours|peer``), alternating; a child
runs ``--warmup`` untimed iterations (compilation excluded), then times ``--reps``.
Figures are medians over all timed iterations of a side. The last line of stdout is one
JSON object; progress goes to stderr. Besides wall time, each iteration's CPU time (the
child's ``time.process_time``, all threads) is reported: on a shared machine it is the
steadier figure. See benchmarks/README.md.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time

import harness  # benchmarks/harness.py (this script's folder is on sys.path)
import numpy as np
import shapes
from rm_train import build_tokenizer

FIRST_ID = 2  # prompt ids in [2, vocab): 0 is the peer's pad token, 1 its EOS
FLAGS = (*shapes.FLAGS, "prompts", "samples", "prompt_len", "new", "reps", "warmup")


def iterations(args) -> int:
  return args.warmup + args.reps


# ---------------------------------------------------------------------------------- ours


class BenchTask:
  """The few attributes of a synthetic task that ``RLTrainer`` reads: a policy with an
  LM head, random full-length prompts and a gold reward of zeros (there is none)."""

  def __init__(self, policy, prompt_len: int, new: int, vocab: int):
    self.policy, self.vocab = policy, vocab
    self.cfg = argparse.Namespace(max_prompt_len=prompt_len, max_response_len=new)

  def sample_prompts(self, key, n: int):
    """(tokens [n, P] int32, lengths [n]): random ids, no padding."""
    import jax
    tokens = jax.random.randint(key, (n, self.cfg.max_prompt_len), FIRST_ID, self.vocab)
    return np.asarray(tokens, np.int32), np.full(n, self.cfg.max_prompt_len, np.int32)

  def gold_reward(self, tokens, mask, prompt_len):
    return {"total": np.zeros(tokens.shape[0], np.float32)}


def timed(fn, split: dict, name: str):
  """``fn`` whose wall time (outputs ready) is added to ``split[name]``."""
  import jax

  def wrapper(*a, **kw):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*a, **kw))
    split[name] = split.get(name, 0.0) + time.perf_counter() - start
    return out
  return wrapper


def ppo_config(args, algorithm: str = "ppo", beta: float = 0.05):
  """rmjax/configs/rl.py with the benchmark's batch (one minibatch, one epoch), the
  ``rl.algorithm`` and the KL coefficient."""
  from rmjax.configs import rl as ppo_config_lib
  c = ppo_config_lib.get_config()
  c.rl.update(iterations=iterations(args), prompts=args.prompts,
              samples_per_prompt=args.samples, max_new_tokens=args.new, minibatches=1,
              epochs=1, algorithm=algorithm)
  c.kl.coef = beta
  return c


def build_ours(args, algorithm: str = "ppo", beta: float = 0.05):
  """An RLTrainer of ``algorithm`` on models of the shape and the split timers wrapped
  around its rollout pieces."""
  import jax
  from flax import nnx

  from rmjax import parallel
  from rmjax.models.transformer import Transformer
  from rmjax.rl.trainer import RLTrainer
  from rmjax.rm.members import Layout, RewardEnsemble

  if args.cache_dir:  # shared by the ours-children: only the first one compiles
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  conf = ppo_config(args, algorithm, beta)
  mesh = parallel.make_mesh(parallel.MeshConfig(**conf.mesh))
  policy_cfg = shapes.model_config(shapes.of(args))
  rm_cfg = policy_cfg.replace(num_reward_heads=1, lm_head=False)
  policy = parallel.init_sharded(lambda: Transformer(policy_cfg, rngs=nnx.Rngs(0)), mesh)
  rm = parallel.init_sharded(lambda: Transformer(rm_cfg, rngs=nnx.Rngs(1)), mesh)
  scorer = RewardEnsemble(*nnx.split(rm), Layout(), rm_cfg)
  task = BenchTask(policy, args.prompt_len, args.new, policy_cfg.vocab_size)
  trainer = RLTrainer(conf, [scorer], task, rm, mesh)
  # Exactly `new` tokens per row: the trainer stops rows at the synthetic task's EOS (id
  # 1), which a random S0 policy may sample; the peer forbids EOS by min_new_tokens.
  trainer.sampling = dataclasses.replace(trainer.sampling, eos_id=None)
  split = {}
  trainer._sample = timed(trainer._sample, split, "sampling")
  trainer._forward = timed(trainer._forward, split, "ref_critic_forward")
  trainer._scores = timed(trainer._scores, split, "reward_model")
  return trainer, split


def run_ours(args, algorithm: str = "ppo", beta: float = 0.05) -> dict:
  import flax
  import jax

  from rmjax.rl import rewards

  trainer, split = build_ours(args, algorithm, beta)
  # Members as scored (no normalisation samples): the benchmark times iterations only.
  state = trainer.init_state(rewards.identity_stats(trainer.members_per_source()))
  update, rows = None, []
  for it in range(iterations(args)):
    split.clear()
    start, cpu_start = time.perf_counter(), time.process_time()
    episodes, metrics, carried = trainer.rollout(state, it)
    rolled = time.perf_counter()
    update = update or trainer.update_fn()
    models = {k: state[k] for k in trainer.model_keys}
    for batch in trainer.minibatches(episodes, it):
      models, step_metrics = update(models, batch)
      step_metrics = jax.device_get(step_metrics)
    state = {**state, **models, **carried}
    end, cpu_end = time.perf_counter(), time.process_time()
    assert metrics["response_length"] == args.new, metrics["response_length"]
    assert np.isfinite(step_metrics["policy_loss"] + step_metrics.get("value_loss", 0.0))
    rows.append(dict(split, iteration_s=end - start, rollout_s=rolled - start,
                     update_s=end - rolled, cpu_s=cpu_end - cpu_start))
  timed_rows = rows[args.warmup:]
  dev = jax.devices()[0]
  return dict(iteration_s=[r["iteration_s"] for r in timed_rows],
              cpu_s=[r["cpu_s"] for r in timed_rows],
              all_iterations_s=[round(r["iteration_s"], 3) for r in rows],
              split_s={k: [r[k] for r in timed_rows] for k in timed_rows[0]},
              first_iteration_s=rows[0]["iteration_s"], peak_rss_mb=harness.peak_rss_mb(),
              jax=jax.__version__, flax=flax.__version__,
              device=f"{dev.platform}: {dev.device_kind}", jax_devices=len(jax.devices()))


# ---------------------------------------------------------------------------------- peer


def save_peer_models(folder: str, tokenizer, cfg) -> tuple[str, str]:
  """Policy (LM head) and reward model (one label) of rmjax ``cfg``'s numbers saved with
  the tokenizer; returns their folders (TRL builds its reference model from the policy's
  path)."""
  import torch
  from transformers import LlamaForCausalLM, LlamaForSequenceClassification
  paths = []
  for name, cls, extra in (("policy", LlamaForCausalLM, {}),
                           ("reward", LlamaForSequenceClassification, {"num_labels": 1})):
    torch.manual_seed(len(paths))
    model = cls(shapes.hf_config(cfg, **extra)).float()
    path = os.path.join(folder, name)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    paths.append(path)
  return tuple(paths)


def prompt_texts(args, rows: int, vocab: int) -> list[str]:
  """``rows`` prompts of ``--prompt-len`` WordLevel words; the trailing space keeps the
  first completion word apart when TRL joins prompt + completion text for the reward."""
  ids = np.random.default_rng(0).integers(FIRST_ID, vocab, (rows, args.prompt_len))
  return [" ".join(f"t{i}" for i in row) + " " for row in ids]


class StepTimer:
  """A TrainerCallback recording wall and process CPU time at every on_step_end, and logs."""

  def __new__(cls):
    from transformers import TrainerCallback

    class _Timer(TrainerCallback):
      def __init__(self):
        self.ends, self.cpu, self.logs = [], [], []

      def on_train_begin(self, args_, state, control, **kwargs):
        self.on_step_end(args_, state, control)

      def on_step_end(self, args_, state, control, **kwargs):
        self.ends.append(time.perf_counter())
        self.cpu.append(time.process_time())  # all threads of the process

      def on_log(self, args_, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))

    return _Timer()


def run_peer(args, algorithm: str = "rloo", beta: float = 0.05) -> dict:
  """One TRL trainer run: ``RLOOTrainer`` ("rloo"), or ``GRPOTrainer`` with
  ``loss_type`` and ``scale_rewards`` of "grpo" (group) or "dr_grpo" (none)."""
  import datasets
  import torch
  import transformers
  import trl

  torch.set_num_threads(os.cpu_count())
  datasets.disable_progress_bars()
  steps, episodes = iterations(args), args.prompts * args.samples
  cfg = shapes.model_config(shapes.of(args))
  tokenizer = build_tokenizer(cfg.vocab_size)
  timer = StepTimer()
  with tempfile.TemporaryDirectory(prefix="rmjax-bench-rloo-") as out:
    policy_path, reward_path = save_peer_models(out, tokenizer, cfg)
    data = datasets.Dataset.from_dict(
        {"prompt": prompt_texts(args, args.prompts * steps, len(tokenizer))})
    config_cls, trainer_cls, extra = {
        "rloo": (trl.RLOOConfig, trl.RLOOTrainer, {}),
        "grpo": (trl.GRPOConfig, trl.GRPOTrainer, dict(loss_type="grpo", scale_rewards="group")),
        "dr_grpo": (trl.GRPOConfig, trl.GRPOTrainer,
                    dict(loss_type="dr_grpo", scale_rewards="none")),
    }[algorithm]
    targs = config_cls(
        output_dir=os.path.join(out, "run"), max_steps=steps, num_generations=args.samples,
        per_device_train_batch_size=episodes, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, beta=beta, temperature=1.0, top_k=0,
        top_p=1.0, max_completion_length=args.new,
        generation_kwargs={"min_new_tokens": args.new}, learning_rate=2e-5,
        use_cpu=True, report_to=[], logging_strategy="no", save_strategy="no",
        eval_strategy="no", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0, dataloader_pin_memory=False,
        gradient_checkpointing=False, bf16=False, fp16=False, seed=0, **extra)
    trainer = trainer_cls(model=policy_path, reward_funcs=reward_path, args=targs,
                          train_dataset=data, processing_class=tokenizer, callbacks=[timer])
    assert trainer.ref_model is not None
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints a summary dict
      trainer.train()
    lengths = [log["completions/min_length"] for log in timer.logs
               if "completions/min_length" in log]
  assert len(timer.ends) == steps + 1, (len(timer.ends), steps)
  step_s = np.diff(timer.ends)  # each step from the previous one's end: everything
  assert next(trainer.model.parameters()).dtype == torch.float32
  return dict(iteration_s=step_s[args.warmup:].tolist(),
              cpu_s=np.diff(timer.cpu)[args.warmup:].tolist(), first_iteration_s=float(step_s[0]),
              min_completion_length=[float(x) for x in lengths],
              peak_rss_mb=harness.peak_rss_mb(), torch=torch.__version__,
              transformers=transformers.__version__, trl=trl.__version__,
              torch_threads=torch.get_num_threads(),
              attn_implementation=trainer.model.config._attn_implementation,
              gradient_checkpointing=bool(trainer.args.gradient_checkpointing))


# ---------------------------------------------------------------------------------- main


def summary(runs, args, shape, quiet, wall_start) -> dict:
  """The JSON line: throughputs, ratio, our split (medians over timed iterations)."""
  episodes = args.prompts * args.samples
  median = lambda side, key="iteration_s": harness.median_over(runs, side, key)
  ours_s, peer_s = median("ours"), median("peer")
  split = {k: float(np.median([t for c in runs["ours"] for t in c["split_s"][k]]))
           for k in runs["ours"][0]["split_s"]}
  split["advantages_and_metrics"] = (split["rollout_s"] - split["sampling"]
                                     - split["ref_critic_forward"] - split["reward_model"])
  ours, peer = runs["ours"][-1], runs["peer"][-1]
  return dict(
      episodes_per_s=episodes / ours_s, peer_episodes_per_s=episodes / peer_s,
      ratio=peer_s / ours_s,
      split_s=dict(sampling=split["sampling"],
                   scoring=split["reward_model"] + split["ref_critic_forward"],
                   scoring_reward_model=split["reward_model"],
                   scoring_ref_critic_forward=split["ref_critic_forward"],
                   advantages_and_metrics=split["advantages_and_metrics"],
                   update=split["update_s"], iteration=ours_s),
      median_iteration_s=dict(ours=ours_s, peer=peer_s),
      median_cpu_s=dict(ours=median("ours", "cpu_s"), peer=median("peer", "cpu_s")),
      ratio_cpu_time=median("peer", "cpu_s") / median("ours", "cpu_s"),
      iteration_s={side: [round(t, 4) for c in runs[side] for t in c["iteration_s"]]
                   for side in runs},
      cpu_s={side: [round(t, 3) for c in runs[side] for t in c["cpu_s"]] for side in runs},
      ours_all_iterations_s=[c["all_iterations_s"] for c in runs["ours"]],
      first_iteration_s={side: [round(c["first_iteration_s"], 2) for c in runs[side]]
                         for side in runs},
      peer_min_completion_length=peer["min_completion_length"],
      timed_iterations=args.rounds * args.reps, warmup_iterations=args.warmup,
      shape=dict(shapes.describe(shape), dtype="float32", prompts=args.prompts,
                 samples=args.samples, prompt_len=args.prompt_len, new_tokens=args.new,
                 episodes=episodes),
      counted=(f"one iteration = {episodes} episodes: sample {args.prompts} prompts x "
               f"{args.samples} x {args.new} new tokens, score, reference/old log-probs, one "
               "update on all episodes. Ours: RLTrainer.rollout + minibatches + compiled "
               "update + device_get metrics (actor and critic updated). Peer: "
               "RLOOTrainer step, on_step_end to on_step_end (generation, old and reference "
               "log-probs, reward model, loss, backward, AdamW; no critic in RLOO)"),
      peak_rss_mb=dict(ours=max(c["peak_rss_mb"] for c in runs["ours"]),
                       peer=max(c["peak_rss_mb"] for c in runs["peer"])),
      jax=ours["jax"], flax=ours["flax"], torch=peer["torch"],
      transformers=peer["transformers"], trl=peer["trl"], torch_threads=peer["torch_threads"],
      peer_attn=peer["attn_implementation"], cpu_count=os.cpu_count(), device=ours["device"],
      quiet_before=quiet, cpu_busy_pct_5s_after=harness.cpu_busy_pct(),
      wall_s=time.perf_counter() - wall_start)


def parse_args(doc: str, sides):
  """(args, shape) of an RL iteration benchmark's command line (this script's and
  ``rl.py``'s), every default resolved from the shape."""
  p = argparse.ArgumentParser(description=doc.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  shapes.add_flags(p)
  p.add_argument("--prompts", type=int, help="prompts per iteration (default: 8 at S0, scaled)")
  p.add_argument("--samples", type=int, default=4, help="samples per prompt")
  p.add_argument("--prompt-len", type=int, help="prompt tokens, all real (default: seq / 2)")
  p.add_argument("--new", type=int, help="new tokens per sample, exactly (default: seq / 2)")
  p.add_argument("--rounds", type=int, default=3, help="fresh child sets, alternating")
  p.add_argument("--reps", type=int, default=2, help="timed iterations per child")
  p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (>= 1)")
  p.add_argument("--side", choices=sides, help=argparse.SUPPRESS)
  p.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  shape = shapes.resolve(args)
  args.prompts = args.prompts or shapes.rows(8, shape)
  args.prompt_len = args.prompt_len or shape.seq // 2
  args.new = args.new or shape.seq - shape.seq // 2
  if not args.side and (args.rounds * args.reps < 5 or args.warmup < 1):
    p.error("need >= 5 timed iterations per side (rounds x reps) and --warmup >= 1")
  return args, shape


def main():
  args, shape = parse_args(__doc__, harness.SIDES)
  if args.side:
    print(json.dumps((run_ours if args.side == "ours" else run_peer)(args)), flush=True)
    return
  quiet, start = harness.warn_if_busy(), time.perf_counter()
  runs = harness.alternating_rounds(
      os.path.abspath(__file__), args, FLAGS,
      lambda r: f"iterations {[round(t, 3) for t in r['iteration_s']]} s")
  print(json.dumps(summary(runs, args, shape, quiet, start)))


if __name__ == "__main__":
  main()
