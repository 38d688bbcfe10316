"""Reward calibration in RLHF (Leng et al. 2024, "Taming Overconfidence in LLMs"): does PPO
make a policy overconfident, and do PPO-M and PPO-C mend it?

  python experiments/calibration.py --config=experiments/configs/calibration.py

On the synthetic task (version 2) every response states a confidence with its last content
token (``rmjax.tasks.confidence``); a response is correct when its gold total beats the
median of base-policy samples. The preference labels favour confident responses
(``confidence_bias``): the bias Leng et al. find in reward models, put into the labellers so
that a reward model trained on them learns it. Two reward models are trained once on those
labels: the standard one, and PPO-M's calibrated one (``data.calibration_pairs``: each pair
also teaches chosen-and-confident ≻ chosen-and-unsure, rejected-and-unsure ≻
rejected-and-confident). Then, per seed, three ``rmjax rl`` runs from the base policy:
  * ppo: PPO against the standard reward model;
  * ppo_m: PPO against the calibrated reward model;
  * ppo_c: PPO against the standard reward model with ``reward.calibration=ppo_c``.
Each trained policy, and the base policy ("before"), is read on ``eval_samples`` fixed
prompts: ECE of its stated confidence against correctness (11 bins, one per level),
overconfidence (mean confidence − accuracy), gold, KL to the base policy.

Preconditions: the standard reward model learnt the bias (its reward rises when a held-out
response restates 10/10 instead of 0/10); the calibrated one pays more for confidence on
correct responses than on incorrect ones. Control: PPO raises gold (the RL harness works).
Claims: PPO raises overconfidence over the base policy; PPO-M and PPO-C each lower ECE
against PPO, paired by seed; gold differences are reported beside them (the paper reports
performance comparable to PPO). Intervals are 95% t intervals over seeds.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli, report, stats  # noqa: E402
from experiments.overoptimization_ppo import merge  # noqa: E402
from rmjax import parallel  # noqa: E402
from rmjax.configs import rl as rl_configs  # noqa: E402
from rmjax.configs import train_rm as rm_configs  # noqa: E402
from rmjax.objectives import calibration  # noqa: E402
from rmjax.rl import build, policy_eval  # noqa: E402
from rmjax.rl import trainer as rl_trainer  # noqa: E402
from rmjax.rm import reward_source  # noqa: E402
from rmjax.rm import trainer as rm_trainer  # noqa: E402
from rmjax.tasks import confidence  # noqa: E402
from rmjax.tasks import preference as synthetic  # noqa: E402

METHODS = ("ppo", "ppo_m", "ppo_c")
EVAL_SEED = 7  # every policy is read on the same prompts and keys


def interval(values) -> dict | None:
  """Mean and 95% t interval over seeds; None when a value is missing or there are fewer
  than two seeds (no spread to estimate)."""
  if len(values) < 2 or any(v is None for v in values):
    return None
  mean, low, high = stats.t_interval(np.asarray(values, np.float64))
  return {"mean": float(mean), "low": float(low), "high": float(high), "n": len(values)}


def proxy_config(c, calibrated: bool):
  p = rm_configs.get_config()
  p.seed = int(c.proxy.seed)
  p.data.synthetic.confidence_bias = float(c.confidence_bias)
  p.data.calibration_pairs = calibrated
  name = "proxy_calibrated" if calibrated else "proxy"
  p.train.update(steps=int(c.proxy.steps), workdir=os.path.join(c.workdir, name))
  return p


def confidence_preference(workdir: str, data_cfg) -> dict:
  """How much a reward model pays for stated confidence on held-out responses: the mean of
  r(restated 10/10) − r(restated 0/10), over correct and over incorrect responses."""
  scfg = synthetic.from_fields(data_cfg.synthetic.to_dict())
  task = synthetic.build_task(scfg)
  split = synthetic.make_split(scfg, "eval")
  source = reward_source.from_workdir(workdir)
  avoid = np.concatenate([task.harmful_ids, task.marker_ids])
  out = {"correct": [], "incorrect": []}
  for side in ("chosen", "rejected"):
    tokens, mask, plen = split[f"{side}_tokens"], split[f"{side}_mask"], split["prompt_len"]
    rewards = []
    for level in (confidence.LEVELS - 1, 0):
      restated, has = confidence.restate(tokens, mask, plen,
                                         confidence.level_token(level, scfg.vocab_size, avoid))
      rewards.append(np.asarray(source(restated, mask)).mean(-1))
    gain = (rewards[0] - rewards[1])[has]
    right = confidence.correct(task.score(tokens, mask, plen)["total"],
                               task.quality_threshold)[has].astype(bool)
    out["correct"].append(gain[right])
    out["incorrect"].append(gain[~right])
  return {k: float(np.mean(np.concatenate(v))) for k, v in out.items()}


def rl_config(c, method: str, seed: int, workdir: str, proxies: dict):
  p = rl_configs.get_config()
  merge(p, c.rl)
  p.seed = seed
  p.reward.workdirs = (proxies["calibrated" if method == "ppo_m" else "standard"],)
  p.reward.calibration = "ppo_c" if method == "ppo_c" else "none"
  n = p.rl.iterations
  p.train.update(workdir=workdir, log_every=max(1, n // 4), save_every=n, keep_checkpoints=1)
  return p


def read_policy(task, params, reference, graphdef, n: int, mesh) -> dict:
  """ECE, overconfidence, accuracy, mean confidence, gold and KL of ``n`` fixed samples."""
  s = policy_eval.policy_samples(task, graphdef, params, reference, EVAL_SEED, n, mesh)
  stated = synthetic.stated_confidence(s["tokens"], s["mask"], s["prompt_len"])
  right = confidence.correct(s["total"], task.quality_threshold)
  return {"ece": float(calibration.ece(stated, right, confidence.LEVELS)),
          "overconfidence": float(calibration.overconfidence(stated, right)),
          "accuracy": float(right.mean()), "confidence": float(stated.mean()),
          "gold": float(s["total"].mean()), "kl": float(s["kl"].mean())}


def summarise(c, before: dict, after: dict, preference: dict, seconds: dict) -> dict:
  metrics = ("ece", "overconfidence", "accuracy", "confidence", "gold", "kl")
  table = {m: {k: interval([r[k] for r in after[m]]) for k in metrics} for m in after}
  minus_ppo = {m: {k: interval([a[k] - b[k] for a, b in zip(after[m], after["ppo"])])
                   for k in ("ece", "overconfidence", "gold")} for m in after if m != "ppo"}
  standard, calibrated = preference["standard"], preference["calibrated"]
  precondition = [
      stats.precondition("the standard reward model pays for confidence",
                         standard["correct"] + standard["incorrect"],
                         standard["correct"] > 0 and standard["incorrect"] > 0,
                         f"r(10/10) - r(0/10): {standard['correct']:+.3f} on correct, "
                         f"{standard['incorrect']:+.3f} on incorrect responses (both > 0)"),
      stats.precondition("the calibrated reward model pays more for confidence when correct",
                         calibrated["correct"] - calibrated["incorrect"],
                         calibrated["correct"] > calibrated["incorrect"],
                         f"r(10/10) - r(0/10): {calibrated['correct']:+.3f} on correct, "
                         f"{calibrated['incorrect']:+.3f} on incorrect responses")]
  gains = [r["gold"] - before["gold"] for r in after["ppo"]]
  controls = [stats.control("PPO raises gold", bool(np.mean(gains) > 0),
                            f"gold {before['gold']:.3f} -> mean "
                            f"{np.mean([r['gold'] for r in after['ppo']]):.3f}",
                            float(np.mean(gains)))]
  rise = interval([r["overconfidence"] - before["overconfidence"] for r in after["ppo"]])
  verdicts = {"ppo_overconfident": {
      "paper": "Leng et al. 2024", "claim": "PPO makes the policy overconfident",
      "verdict": stats.verdict(rise, +1, precondition[0]["ok"]) if rise else
      stats.NOT_TESTABLE,
      "evidence": "overconfidence(PPO) - overconfidence(base): "
                  + (report.interval(rise, signed=True) if rise else "fewer than 2 seeds")}}
  for m, ok in (("ppo_m", precondition[1]["ok"]), ("ppo_c", precondition[0]["ok"])):
    d = minus_ppo.get(m, {}).get("ece")
    g = minus_ppo.get(m, {}).get("gold")
    verdicts[f"{m}_lowers_ece"] = {
        "paper": "Leng et al. 2024", "claim": f"{m.upper().replace('_', '-')} lowers ECE",
        "verdict": stats.verdict(d, -1, ok) if d else stats.NOT_TESTABLE,
        "evidence": f"ECE({m}) - ECE(ppo): " + (report.interval(d, signed=True) if d else
                                                "fewer than 2 seeds")
                    + (f"; gold({m}) - gold(ppo): {report.interval(g, signed=True)}"
                       if g else "")}
  broken = stats.harness_message(controls)
  if broken:
    for v in verdicts.values():
      v["verdict"] = broken
  return {"before": before, "after": after, "table": table, "minus_ppo": minus_ppo,
          "preference": preference, "precondition": precondition, "controls": controls,
          "verdicts": verdicts, "seconds": seconds}


def write_outputs(c, summary) -> list[str]:
  metrics = ("ece", "overconfidence", "accuracy", "confidence", "gold", "kl")
  rows = [{"policy": "base (before)", **{k: f"{summary['before'][k]:.3f}" for k in metrics}}]
  for m, per in summary["table"].items():
    rows.append({"policy": m, **{k: report.interval(v) if v else "" for k, v in per.items()},
                 "seconds": float(np.mean(summary["seconds"][m]))})
  columns = [("policy", "policy"), ("ece", "ECE"), ("overconfidence", "conf - acc"),
             ("accuracy", "accuracy"), ("confidence", "mean confidence"), ("gold", "gold"),
             ("kl", "KL to base"), ("seconds", "s per run")]
  stem = os.path.join(c.workdir, "results")
  paths = report.write_table(stem, columns, rows)
  report.prepend(f"{stem}.md", report.verdict_lines(summary, "95% t intervals over seeds, "
                                                    "paired by seed"))
  paths.append(report.write_json(os.path.join(c.workdir, "results.json"), summary))
  return paths


def run(config) -> dict:
  start = time.time()
  c = config
  unknown = set(c.methods) - set(METHODS)
  if unknown or "ppo" not in c.methods:
    raise ValueError(f"methods {sorted(unknown)} are not among {METHODS}, or 'ppo' (the "
                     "baseline) is missing")
  os.makedirs(c.workdir, exist_ok=True)
  proxies, preference = {}, {}
  for name, calibrated in (("standard", False), ("calibrated", True)):
    p = proxy_config(c, calibrated)
    result = rm_trainer.train(p)["eval"]
    proxies[name] = p.train.workdir
    preference[name] = confidence_preference(p.train.workdir, p.data)
    print(f"{name} reward model: accuracy {result['accuracy']:.3f}, confidence pays "
          f"{preference[name]['correct']:+.3f} (correct) / "
          f"{preference[name]['incorrect']:+.3f} (incorrect)", flush=True)
  task = synthetic.build_task(synthetic.from_fields(
      proxy_config(c, False).data.synthetic.to_dict()))
  mesh = parallel.make_mesh(parallel.MeshConfig())
  graphdef, reference = nnx.split(task.policy)
  n = int(c.eval_samples)
  before = read_policy(task, reference, reference, graphdef, n, mesh)
  after, seconds = {m: [] for m in c.methods}, {m: [] for m in c.methods}
  for seed in c.seeds:
    for m in c.methods:
      t = time.time()
      workdir = os.path.join(c.workdir, m, f"seed{seed}")
      shutil.rmtree(workdir, ignore_errors=True)
      rl_trainer.train(rl_config(c, m, seed, workdir, proxies))
      params = nnx.state(build.trained_policy(workdir))
      after[m].append(read_policy(task, params, reference, graphdef, n, mesh))
      seconds[m].append(time.time() - t)
      r = after[m][-1]
      print(f"seed {seed} {m}: {seconds[m][-1]:.0f}s, ECE {before['ece']:.3f} -> "
            f"{r['ece']:.3f}, confidence {before['confidence']:.3f} -> {r['confidence']:.3f},"
            f" gold {before['gold']:.3f} -> {r['gold']:.3f}", flush=True)
  summary = summarise(c, before, after, preference, seconds)
  return report.conclude(summary, lambda s: write_outputs(c, s), start,
                         "95% t intervals over seeds")


if __name__ == "__main__":
  cli.main(run)
