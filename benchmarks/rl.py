"""Critic-free RL iteration throughput of rmjax against TRL: RLOO against ``RLOOTrainer``,
GRPO and Dr. GRPO against ``GRPOTrainer``, and our PPO against our RLOO.

    python benchmarks/rl.py [--shape s0|s1|s2] [--prompts 8 --samples 4 --rounds 3 --reps 2]

Same workload and conventions as ``ppo.py`` (whose builders this script uses): random
float32 policy, reference and reward model of ``--shape``; one iteration = ``--prompts``
prompts x ``--samples`` samples of exactly ``--new`` tokens, reward-model scoring,
reference log-probs, one update on all episodes as a single minibatch. Ours:
``RLTrainer`` with ``rl.algorithm`` rloo / grpo / dr_grpo / ppo (each prompt prefilled once
for its samples). The peers: ``RLOOTrainer`` (β 0.05, as ``ppo.py``) and ``GRPOTrainer``
with β 0.04 > 0 (so it loads and runs the reference), ``loss_type="grpo"`` with
``scale_rewards="group"``, and ``loss_type="dr_grpo"`` with ``scale_rewards="none"``; our
GRPO runs use the same β. Each round starts one fresh child per side, alternating the
order; figures are medians over timed iterations. The last stdout line is one JSON object
with ``rloo_ratio``, ``grpo_ratio``, ``dr_grpo_ratio`` (peer seconds / ours per
iteration) and ``ppo_over_rloo`` (our PPO's seconds per iteration / our RLOO's).
"""

import json
import os
import time

import harness
import numpy as np
import ppo as base  # benchmarks/ppo.py
import shapes

ALGORITHMS = ("rloo", "grpo", "dr_grpo")
BETA = {"rloo": 0.05, "grpo": 0.04, "dr_grpo": 0.04, "ppo": 0.05}
SIDES = (*(f"{who}_{a}" for a in ALGORITHMS for who in ("ours", "peer")), "ours_ppo")


def run_side(args) -> dict:
  who, algorithm = args.side.split("_", 1)
  run = base.run_ours if who == "ours" else base.run_peer
  return run(args, algorithm, BETA[algorithm])


def summary(runs, args, shape, quiet, wall_start) -> dict:
  episodes = args.prompts * args.samples
  median = {side: harness.median_over(runs, side, "iteration_s") for side in runs}
  out = {f"{a}_ratio": median[f"peer_{a}"] / median[f"ours_{a}"] for a in ALGORITHMS}
  out["ppo_over_rloo"] = median["ours_ppo"] / median["ours_rloo"]
  out.update(
      episodes_per_s={side: episodes / s for side, s in median.items()},
      median_iteration_s=median,
      median_cpu_s={side: harness.median_over(runs, side, "cpu_s") for side in runs},
      ours_split_s={side: {k: float(np.median([t for c in runs[side] for t in c["split_s"][k]]))
                           for k in runs[side][0]["split_s"]}
                    for side in runs if side.startswith("ours")},
      iteration_s={side: [round(t, 4) for c in runs[side] for t in c["iteration_s"]]
                   for side in runs},
      peak_rss_mb={side: max(c["peak_rss_mb"] for c in runs[side]) for side in runs},
      timed_iterations=args.rounds * args.reps, warmup_iterations=args.warmup,
      beta=BETA,
      shape=dict(shapes.describe(shape), dtype="float32", prompts=args.prompts,
                 samples=args.samples, prompt_len=args.prompt_len, new_tokens=args.new,
                 episodes=episodes),
      trl=runs["peer_rloo"][-1]["trl"], torch=runs["peer_rloo"][-1]["torch"],
      jax=runs["ours_rloo"][-1]["jax"], cpu_count=os.cpu_count(),
      quiet_before=quiet, cpu_busy_pct_5s_after=harness.cpu_busy_pct(),
      wall_s=time.perf_counter() - wall_start)
  return out


def main():
  args, shape = base.parse_args(__doc__, SIDES)
  if args.side:
    print(json.dumps(run_side(args)), flush=True)
    return
  quiet, start = harness.warn_if_busy(), time.perf_counter()
  runs = harness.alternating_rounds(
      os.path.abspath(__file__), args, base.FLAGS,
      lambda r: f"iterations {[round(t, 3) for t in r['iteration_s']]} s", sides=SIDES)
  print(json.dumps(summary(runs, args, shape, quiet, start)))


if __name__ == "__main__":
  main()
