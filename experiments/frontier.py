"""The reward–KL frontier of rmjax's policy optimisers against one shared proxy reward
model, with the gold reward read at matched KL.

  python experiments/frontier.py --config=experiments/configs/frontier.py

On the synthetic task (version 2): one proxy reward model (``rmjax train-rm``'s default on
the task's gold-labelled pairs) is trained once and shared by every method and seed. Each
method then optimises the task's base policy against it:
  * bon_distill: rejection-sampling fine-tuning (``rmjax sft``, best of n by the proxy);
  * ppo, rloo, grpo, dr_grpo, reinforce_pp: ``rmjax rl`` with that ``rl.algorithm``;
  * dpo: ``rmjax dpo`` on the pairs the proxy was trained on (the same preference data);
  * online_dpo: iterative DPO (``dpo.online``), each round's own samples paired best
    against worst by the proxy.
Every run records its trajectory of (KL to the base policy, gold reward of the policy's own
samples): RL per iteration (the rollout's k1 sum and gold, smoothed over ``smooth``
iterations), DPO and SFT at every evaluation (fixed prompts), the base policy first. Gold
at each KL of ``kls`` is interpolated at the trajectory's first crossing; a run that never
reaches a KL has no value there. Per method and KL: the mean over seeds and a t interval;
paired by seed, each method minus PPO. Positive controls (seed 0): each RL method and
best-of-n distillation with the gold reward itself in place of the proxy must raise gold.
Claims checked: RLOO is at least as good as PPO at matched KL (Ahmadian et al. 2024, who
report it better); Dr. GRPO's responses are shorter than GRPO's at the end of training
(Liu et al. 2025). Writes results.md/.csv, results.json and frontier.png into the workdir.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli, gold_ppo, report, stats  # noqa: E402
from experiments.overoptimization_ppo import merge  # noqa: E402
from experiments.ppo_analysis import running_mean  # noqa: E402
from rmjax.configs import dpo as dpo_configs  # noqa: E402
from rmjax.configs import rl as rl_configs  # noqa: E402
from rmjax.configs import sft as sft_configs  # noqa: E402
from rmjax.configs import train_rm as rm_configs  # noqa: E402
from rmjax.rl import dpo, online_dpo, sft  # noqa: E402
from rmjax.rl import trainer as rl_trainer  # noqa: E402
from rmjax.rm import trainer as rm_trainer  # noqa: E402
from rmjax.runtime.metrics import read_metrics  # noqa: E402
from rmjax.tasks import preference as synthetic  # noqa: E402

RL_METHODS = ("ppo", "rloo", "grpo", "dr_grpo", "reinforce_pp")
METHODS = ("bon_distill", *RL_METHODS, "dpo", "online_dpo")
BASELINE = "ppo"


def apply_scale(config) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  s = int(c.scale)
  if s < 1:
    raise ValueError(f"scale={c.scale} must be an integer >= 1")
  c.rl.rl.prompts *= s
  c.online_dpo.dpo.online.prompts *= s
  c.proxy.steps *= s
  for section in (c.dpo, c.sft):
    section.train.steps *= s
    section.train.eval_every *= s
  return c


def train_proxy(c) -> tuple[str, dict]:
  """(workdir, held-out metrics) of the shared proxy reward model (trained once)."""
  p = rm_configs.get_config()
  p.seed = int(c.proxy.seed)
  p.train.update(steps=int(c.proxy.steps), workdir=os.path.join(c.workdir, "proxy"))
  return p.train.workdir, rm_trainer.train(p)["eval"]


def _rows(workdir: str, split: str) -> list[dict]:
  return sorted((r for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
                 if r.get("split") == split), key=lambda r: r["step"])


def rl_run(c, algorithm: str, seed: int, workdir: str, proxy: str, gold: bool = False):
  """Trajectory {"kl", "gold", "length"} of one ``rmjax rl`` run (against the gold reward
  with ``gold``: the control)."""
  p = rl_configs.get_config()
  merge(p, c.rl)
  p.rl.algorithm, p.seed = algorithm, seed
  p.reward.workdirs = (proxy,)
  n = p.rl.iterations
  p.train.update(workdir=workdir, log_every=max(1, n // 4), save_every=n, keep_checkpoints=1)
  shutil.rmtree(workdir, ignore_errors=True)
  if gold:
    task = synthetic.build_task(synthetic.from_fields(
        rm_configs.get_config().data.synthetic.to_dict()))
    p.reward.member_norm = False
    rl_trainer.train(p, scorers=[gold_ppo.source(task)], task=gold_ppo.rollout(task),
                     critic_model=task.policy)
  else:
    rl_trainer.train(p)
  rows = _rows(workdir, "train")
  smooth = lambda key: running_mean([r[key] for r in rows], int(c.smooth))
  gold = smooth("gold")  # the first iteration samples the base policy itself
  return {"kl": np.concatenate([[0.0], smooth("kl")]), "gold": np.concatenate([gold[:1], gold]),
          "length": np.asarray([r["response_length"] for r in rows])}


def online_dpo_run(c, method: str, seed: int, workdir: str, proxy: str):
  """Trajectory {"kl", "gold"} of one iterative-DPO run labelled by the proxy, per round
  (each round's own samples, smoothed like RL), the base policy first."""
  p = dpo_configs.get_config()
  merge(p, c.online_dpo)
  p.seed, p.dpo.online.reward = seed, proxy
  p.train.update(workdir=workdir, save_every=p.dpo.online.rounds, keep_checkpoints=1)
  shutil.rmtree(workdir, ignore_errors=True)
  online_dpo.train(p)
  rows = _rows(workdir, "train")
  smooth = lambda key: running_mean([r[key] for r in rows], int(c.smooth))
  gold = smooth("gold")
  return {"kl": np.concatenate([[0.0], smooth("kl")]), "gold": np.concatenate([gold[:1], gold])}


def offline_run(c, method: str, seed: int, workdir: str, proxy: str, gold: bool = False):
  """Trajectory {"kl", "gold"} of one DPO or best-of-n-distillation run, read at its
  evaluations, the base policy (KL 0, the reference's gold) first."""
  if method == "dpo":
    p = dpo_configs.get_config()
    merge(p, c.dpo)
    program = dpo
  else:
    p = sft_configs.get_config()
    merge(p, c.sft)
    p.data.source = "best_of_n"
    p.data.best_of_n.reward = "gold" if gold else proxy
    program = sft
  p.seed = seed
  p.train.update(workdir=workdir, save_every=p.train.steps, keep_checkpoints=1)
  shutil.rmtree(workdir, ignore_errors=True)
  program.train(p)
  rows = _rows(workdir, "eval")
  return {"kl": np.asarray([0.0] + [r["kl"] for r in rows]),
          "gold": np.asarray([rows[0]["gold_reference"]] + [r["gold"] for r in rows])}


def gold_at(curve: dict, target: float) -> float | None:
  """Gold interpolated at the first crossing of KL ``target`` (None: never reached)."""
  kl, gold = curve["kl"], curve["gold"]
  hits = np.flatnonzero(kl >= target)
  if not hits.size:
    return None
  i = int(hits[0])
  if i == 0:
    return float(gold[0])
  w = (target - kl[i - 1]) / max(kl[i] - kl[i - 1], 1e-12)
  return float(gold[i - 1] + w * (gold[i] - gold[i - 1]))


def interval(values) -> dict | None:
  """Mean and 95% t interval over seeds; None when a value is missing or there are fewer
  than two seeds (no spread to estimate)."""
  if len(values) < 2 or any(v is None for v in values):
    return None
  mean, low, high = stats.t_interval(np.asarray(values, np.float64))
  return {"mean": float(mean), "low": float(low), "high": float(high), "n": len(values)}


def summarise(c, curves: dict, controls_curves: dict, proxy_eval: dict, seconds: dict) -> dict:
  """Intervals per method and KL, paired differences with PPO, controls, verdicts."""
  at = {m: {str(k): [gold_at(cv, k) for cv in curves[m]] for k in c.kls} for m in curves}
  table = {m: {k: interval(v) for k, v in at[m].items()} for m in at}

  def paired(m, k):
    a, b = at[m][k], at[BASELINE][k]
    return None if None in a or None in b else interval([x - y for x, y in zip(a, b)])

  diffs = {m: {k: paired(m, k) for k in at[m]} for m in at if m != BASELINE}
  base = float(np.mean([cv["gold"][0] for m in curves for cv in curves[m]]))
  agreement = float(proxy_eval.get("gold_agreement", 0.0))
  precondition = [stats.precondition(
      "proxy agrees with gold", agreement, agreement > 0.6,
      f"held-out gold agreement {agreement:.3f} (needs > 0.6)")]
  reach = {m: float(np.mean([cv["kl"].max() for cv in curves[m]])) for m in curves}
  k_claim = str(min(c.kls))
  reached = lambda m: m in at and None not in at[m][k_claim]
  precondition.append(stats.precondition(
      "ppo and rloo reach the smallest KL", [reach.get("ppo"), reach.get("rloo")],
      reached("ppo") and reached("rloo"), f"KL {k_claim} in every seed"))
  controls = []
  for m, cv in controls_curves.items():
    gain = float(cv["gold"][-1] - cv["gold"][0])
    controls.append(stats.control(f"{m} on the gold reward raises gold", gain > 0,
                                  f"gold {cv['gold'][0]:.3f} -> {cv['gold'][-1]:.3f}", gain))
  verdicts = {}
  d = diffs.get("rloo", {}).get(k_claim)
  ok = precondition[0]["ok"] and precondition[1]["ok"] and d is not None
  verdicts["rloo_vs_ppo"] = {
      "paper": "Ahmadian et al. 2024", "claim": "RLOO reaches higher gold than PPO",
      "verdict": stats.verdict(d, +1, ok) if d else stats.NOT_TESTABLE,
      "evidence": f"gold(RLOO) - gold(PPO) at KL {k_claim}: "
                  + (report.interval(d, signed=True) if d else "not reached")}
  if "grpo" in curves and "dr_grpo" in curves:
    last = lambda m: [float(np.mean(cv["length"][-5:])) for cv in curves[m]]
    dl = interval([a - b for a, b in zip(last("dr_grpo"), last("grpo"))])
    verdicts["dr_grpo_shorter"] = {
        "paper": "Liu et al. 2025", "claim": "Dr. GRPO's responses are shorter than GRPO's",
        "verdict": stats.verdict(dl, -1, True) if dl else stats.NOT_TESTABLE,
        "evidence": "length(Dr. GRPO) - length(GRPO), last 5 iterations: "
                    + (report.interval(dl, signed=True) if dl else "fewer than 2 seeds")}
  broken = stats.harness_message(controls)
  if broken:  # a failed control: no comparison of this run means anything
    for v in verdicts.values():
      v["verdict"] = broken
  return {"gold_at_kl": table, "minus_ppo": diffs, "reach": reach, "base_gold": base,
          "proxy_eval": proxy_eval, "precondition": precondition, "controls": controls,
          "verdicts": verdicts, "seconds": seconds,
          "curves": {m: [{k: v.tolist() for k, v in cv.items()} for cv in curves[m]]
                     for m in curves}}


def write_outputs(c, summary) -> list[str]:
  rows = []
  for m, per_kl in summary["gold_at_kl"].items():
    row = {"method": m, "reach": summary["reach"][m],
           "seconds": float(np.mean(summary["seconds"][m]))}
    for k, v in per_kl.items():
      row[f"gold@{k}"] = report.interval(v) if v else "not reached"
      d = summary["minus_ppo"].get(m, {}).get(k)
      row[f"minus_ppo@{k}"] = report.interval(d, signed=True) if d else ""
    rows.append(row)
  columns = [("method", "method"), *((f"gold@{k}", f"gold at KL {k}") for k in c.kls),
             *((f"minus_ppo@{k}", f"- PPO at KL {k}") for k in c.kls),
             ("reach", "max KL"), ("seconds", "s per run")]
  stem = os.path.join(c.workdir, "results")
  paths = report.write_table(stem, columns, rows)
  lines = [*report.verdict_lines(summary, "95% t intervals over seeds, paired by seed"),
           f"Base policy gold {summary['base_gold']:.3f}."]
  report.prepend(f"{stem}.md", lines)
  paths.append(report.write_json(os.path.join(c.workdir, "results.json"), summary))
  series = []
  for m, cvs in summary["curves"].items():
    grid = np.linspace(0, max(c.kls), 9)
    values = np.array([[gold_at({k: np.asarray(v) for k, v in cv.items()}, g) or np.nan
                        for g in grid] for cv in cvs])
    mean = np.nanmean(values, 0)
    series.append(report.Series(m, grid, mean, np.nanmin(values, 0), np.nanmax(values, 0)))
  plot = os.path.join(c.workdir, "frontier.png")
  report.plot_bands(plot, [[series]], ["gold against KL to the base policy (min-max over "
                                       "seeds)"], "KL (nats, k1 sum)", ["gold"])
  return [*paths, plot]


def run(config) -> dict:
  start = time.time()
  c = apply_scale(config)
  unknown = set(c.methods) - set(METHODS)
  if unknown or BASELINE not in c.methods:
    raise ValueError(f"methods {sorted(unknown)} are not among {METHODS}, or {BASELINE!r} "
                     "(the baseline) is missing")
  os.makedirs(c.workdir, exist_ok=True)
  proxy, proxy_eval = train_proxy(c)
  print(f"proxy: gold agreement {proxy_eval.get('gold_agreement', float('nan')):.3f}",
        flush=True)
  curves, seconds, controls = {m: [] for m in c.methods}, {m: [] for m in c.methods}, {}
  for seed in c.seeds:
    for m in c.methods:
      t = time.time()
      workdir = os.path.join(c.workdir, m, f"seed{seed}")
      run_fn = (rl_run if m in RL_METHODS else online_dpo_run if m == "online_dpo"
                else offline_run)
      curves[m].append(run_fn(c, m, seed, workdir, proxy))
      seconds[m].append(time.time() - t)
      cv = curves[m][-1]
      print(f"seed {seed} {m}: {seconds[m][-1]:.0f}s, gold {cv['gold'][0]:.3f} -> "
            f"{cv['gold'][-1]:.3f} at KL {cv['kl'][-1]:.3f}", flush=True)
  for m in c.methods:
    if m in ("dpo", "online_dpo"):
      continue  # DPO's data are gold-labelled already; online DPO's labeller is a workdir
    workdir = os.path.join(c.workdir, "control", m)
    run_fn = rl_run if m in RL_METHODS else offline_run
    controls[m] = run_fn(c, m, c.seeds[0], workdir, proxy, gold=True)
  summary = summarise(c, curves, controls, proxy_eval, seconds)
  return report.conclude(summary, lambda s: write_outputs(c, s), start,
                         "95% t intervals over seeds")


if __name__ == "__main__":
  cli.main(run)
