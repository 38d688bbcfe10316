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
samples) per prompt (``per_prompt.jsonl``): RL and online DPO per iteration (the rollout's
k1 sum and gold, the curve smoothed over ``smooth`` iterations), DPO and SFT at every
evaluation (fixed prompts), the base policy first. Gold at each KL of ``kls`` is
interpolated at the curve's first crossing; a run that never reaches a KL has no value
there. Per method and KL: the mean over seeds and the seeds-then-prompts bootstrap
interval (``trajectory_stats``: each resampled trajectory rebuilt, re-smoothed and read
again); paired by seed, each method minus PPO. Positive controls (seed 0): each RL method and
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
from experiments import trajectory_stats as traj  # noqa: E402
from experiments.overoptimization_ppo import merge  # noqa: E402
from experiments.ppo_analysis import running_mean  # noqa: E402
from rmjax.configs import dpo as dpo_configs  # noqa: E402
from rmjax.configs import rl as rl_configs  # noqa: E402
from rmjax.configs import sft as sft_configs  # noqa: E402
from rmjax.configs import train_rm as rm_configs  # noqa: E402
from rmjax.rl import dpo, online_dpo, sft  # noqa: E402
from rmjax.rl import trainer as rl_trainer  # noqa: E402
from rmjax.rm import trainer as rm_trainer  # noqa: E402
from rmjax.runtime.metrics import ITEMS_FILE, read_metrics  # noqa: E402
from rmjax.tasks import preference as synthetic  # noqa: E402

RL_METHODS = ("ppo", "rloo", "grpo", "dr_grpo", "reinforce_pp")
OFFLINE = ("bon_distill", "dpo")  # read at evaluations on fixed prompts, unsmoothed
METHODS = ("bon_distill", *RL_METHODS, "dpo", "online_dpo")
BASELINE = "ppo"
KL, GOLD, LENGTH = 0, 1, 2  # the fields of a run's per-prompt records


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


def per_prompt(workdir: str, split: str, fields: tuple[str, ...]) -> np.ndarray:
  """[points, prompts, fields] of a run's ``per_prompt.jsonl`` rows of ``split``, by step."""
  rows = sorted((r for r in read_metrics(os.path.join(workdir, ITEMS_FILE))
                 if r["split"] == split), key=lambda r: r["step"])
  if not rows:
    raise ValueError(f"{workdir}: no per-prompt {split} rows in {ITEMS_FILE}")
  return np.stack([np.stack([np.asarray(r[f], np.float64) for f in fields], axis=-1)
                   for r in rows])


def rl_run(c, algorithm: str, seed: int, workdir: str, proxy: str, gold: bool = False):
  """[iterations, prompts, (kl, gold, length)] records of one ``rmjax rl`` run (against the
  gold reward with ``gold``: the control)."""
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
  return per_prompt(workdir, "train", ("kl", "gold", "response_length"))


def online_dpo_run(c, method: str, seed: int, workdir: str, proxy: str):
  """[rounds, prompts, (kl, gold)] records of one iterative-DPO run labelled by the proxy
  (each round's own samples)."""
  p = dpo_configs.get_config()
  merge(p, c.online_dpo)
  p.seed, p.dpo.online.reward = seed, proxy
  p.train.update(workdir=workdir, save_every=p.dpo.online.rounds, keep_checkpoints=1)
  shutil.rmtree(workdir, ignore_errors=True)
  online_dpo.train(p)
  return per_prompt(workdir, "train", ("kl", "gold"))


def offline_run(c, method: str, seed: int, workdir: str, proxy: str, gold: bool = False):
  """[1 + evaluations, prompts, (kl, gold)] records of one DPO or best-of-n-distillation
  run at its evaluations (fixed prompts), the base policy (KL 0, the reference's gold on
  the same prompts) first."""
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
  evals = per_prompt(workdir, "eval", ("kl", "gold", "gold_reference"))
  base = np.stack([np.zeros_like(evals[0, :, 2]), evals[0, :, 2]], axis=-1)
  return np.concatenate([base[None], evals[..., :2]])


def curve(means: np.ndarray, method: str, width: int) -> tuple[np.ndarray, np.ndarray]:
  """(KL, gold) [n, points'] curves of per-point means [n, points, fields]: RL and online
  DPO smoothed over ``width`` iterations with the base policy (KL 0, the first iteration's
  gold: it samples the base policy) put first; DPO and SFT as evaluated."""
  kl, gold = means[..., KL], means[..., GOLD]
  if method in OFFLINE:
    return kl, gold
  kl, gold = running_mean(kl, width), running_mean(gold, width)
  return (np.concatenate([np.zeros(kl.shape[:-1] + (1,)), kl], axis=-1),
          np.concatenate([gold[..., :1], gold], axis=-1))


def crossings(kl: np.ndarray, gold: np.ndarray, targets) -> np.ndarray:
  """[..., targets] gold interpolated at the first point where ``kl`` [..., points]
  reaches each target (NaN where it never does)."""
  kl, gold = np.asarray(kl, np.float64), np.asarray(gold, np.float64)
  take = lambda x, i: np.take_along_axis(x, i[..., None], axis=-1)[..., 0]
  out = []
  for target in targets:
    hits = kl >= target
    i = np.argmax(hits, axis=-1)  # the first crossing (0 where there is none)
    before = np.maximum(i - 1, 0)
    k0, k1, g0, g1 = take(kl, before), take(kl, i), take(gold, before), take(gold, i)
    w = (target - k0) / np.maximum(k1 - k0, 1e-12)
    value = np.where(i == 0, g1, g0 + w * (g1 - g0))
    out.append(np.where(hits.any(axis=-1), value, np.nan))
  return np.stack(out, axis=-1)


def arms(c, records: dict) -> dict[str, traj.Trajectories]:
  """Per method: its seeds' records, read as gold at each KL of ``kls``."""
  def read(m):
    return lambda means: crossings(*curve(means, m, int(c.smooth)), c.kls)
  return {m: traj.Trajectories(runs, read(m), aligned=m in OFFLINE)
          for m, runs in records.items()}


def mean_curve(c, method: str, run: np.ndarray) -> dict:
  """{"kl", "gold"} of a run's own curve (its per-point means)."""
  kl, gold = curve(run.mean(axis=1)[None], method, int(c.smooth))
  return {"kl": kl[0], "gold": gold[0]}


def summarise(c, records: dict, control_records: dict, proxy_eval: dict,
              seconds: dict) -> dict:
  """Intervals per method and KL, paired differences with PPO, controls, verdicts."""
  keys = [str(k) for k in c.kls]
  boot = {"num_resamples": int(c.resamples), "seed": 0}
  methods = arms(c, records)
  table = {m: dict(zip(keys, traj.trajectory_bootstrap(a, **boot)))
           for m, a in methods.items()}
  diffs = {m: dict(zip(keys, traj.trajectory_difference(a, methods[BASELINE], **boot)))
           for m, a in methods.items() if m != BASELINE}
  curves = {m: [mean_curve(c, m, r) for r in runs] for m, runs in records.items()}
  base = float(np.mean([cv["gold"][0] for m in curves for cv in curves[m]]))
  agreement = float(proxy_eval.get("gold_agreement", 0.0))
  precondition = [stats.precondition(
      "proxy agrees with gold", agreement, agreement > 0.6,
      f"held-out gold agreement {agreement:.3f} (needs > 0.6)")]
  reach = {m: float(np.mean([cv["kl"].max() for cv in curves[m]])) for m in curves}
  k_claim = keys[int(np.argmin(c.kls))]
  reached = lambda m: m in table and table[m][k_claim] is not None
  precondition.append(stats.precondition(
      "ppo and rloo reach the smallest KL", [reach.get("ppo"), reach.get("rloo")],
      reached("ppo") and reached("rloo"), f"KL {k_claim} in every seed"))
  controls = []
  for m, run in control_records.items():
    cv = mean_curve(c, m, run)
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
  if "grpo" in records and "dr_grpo" in records:
    tail = lambda means: means[:, -5:, LENGTH].mean(axis=1, keepdims=True)
    last = lambda m: traj.Trajectories(records[m], tail, aligned=False)
    dl = traj.trajectory_difference(last("dr_grpo"), last("grpo"), **boot)[0]
    verdicts["dr_grpo_shorter"] = {
        "paper": "Liu et al. 2025", "claim": "Dr. GRPO's responses are shorter than GRPO's",
        "verdict": stats.verdict(dl, -1, True),
        "evidence": "length(Dr. GRPO) - length(GRPO), last 5 iterations: "
                    + report.interval(dl, signed=True)}
  broken = stats.harness_message(controls)
  if broken:  # a failed control: no comparison of this run means anything
    for v in verdicts.values():
      v["verdict"] = broken
  return {"gold_at_kl": table, "minus_ppo": diffs, "reach": reach, "base_gold": base,
          "proxy_eval": proxy_eval, "precondition": precondition, "controls": controls,
          "verdicts": verdicts, "seconds": seconds,
          "curves": {m: [{k: v.tolist() for k, v in cv.items()} for cv in curves[m]]
                     for m in curves}}


HOW = ("95% seeds-then-prompts bootstrap intervals, each resampled trajectory rebuilt and "
       "read again; differences paired by seed")


def cell(x: dict | None, signed: bool = False) -> str:
  """A table cell: the interval, and the share of resamples that did not reach the KL."""
  if x is None:
    return "not reached"
  short = f" ({x['unreached']:.0%} of resamples short)" if x["unreached"] >= 0.005 else ""
  return report.interval(x, signed) + short


def write_outputs(c, summary) -> list[str]:
  rows = []
  for m, per_kl in summary["gold_at_kl"].items():
    row = {"method": m, "reach": summary["reach"][m],
           "seconds": float(np.mean(summary["seconds"][m]))}
    for k, v in per_kl.items():
      row[f"gold@{k}"] = cell(v)
      d = summary["minus_ppo"].get(m, {}).get(k)
      row[f"minus_ppo@{k}"] = cell(d, signed=True) if m != BASELINE else ""
    rows.append(row)
  columns = [("method", "method"), *((f"gold@{k}", f"gold at KL {k}") for k in c.kls),
             *((f"minus_ppo@{k}", f"- PPO at KL {k}") for k in c.kls),
             ("reach", "max KL"), ("seconds", "s per run")]
  stem = os.path.join(c.workdir, "results")
  paths = report.write_table(stem, columns, rows)
  lines = [*report.verdict_lines(summary, HOW), f"Base policy gold {summary['base_gold']:.3f}."]
  report.prepend(f"{stem}.md", lines)
  paths.append(report.write_json(os.path.join(c.workdir, "results.json"), summary))
  series = []
  grid = np.linspace(0, max(c.kls), 9)
  for m, cvs in summary["curves"].items():
    values = np.stack([crossings(cv["kl"], cv["gold"], grid) for cv in cvs])
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
  records, seconds, controls = {m: [] for m in c.methods}, {m: [] for m in c.methods}, {}
  for seed in c.seeds:
    for m in c.methods:
      t = time.time()
      workdir = os.path.join(c.workdir, m, f"seed{seed}")
      run_fn = (rl_run if m in RL_METHODS else online_dpo_run if m == "online_dpo"
                else offline_run)
      records[m].append(run_fn(c, m, seed, workdir, proxy))
      seconds[m].append(time.time() - t)
      cv = mean_curve(c, m, records[m][-1])
      print(f"seed {seed} {m}: {seconds[m][-1]:.0f}s, gold {cv['gold'][0]:.3f} -> "
            f"{cv['gold'][-1]:.3f} at KL {cv['kl'][-1]:.3f}", flush=True)
  for m in c.methods:
    if m in ("dpo", "online_dpo"):
      continue  # DPO's data are gold-labelled already; online DPO's labeller is a workdir
    workdir = os.path.join(c.workdir, "control", m)
    run_fn = rl_run if m in RL_METHODS else offline_run
    controls[m] = run_fn(c, m, c.seeds[0], workdir, proxy, gold=True)
  summary = summarise(c, records, controls, proxy_eval, seconds)
  return report.conclude(summary, lambda s: write_outputs(c, s), start, HOW)


if __name__ == "__main__":
  cli.main(run)
