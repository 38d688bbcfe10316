"""Reward-model overoptimisation under PPO, and what conservative ensembles and a KL
penalty change, with every method compared at matched KL.

  python experiments/overoptimization_ppo.py --config=experiments/configs/overoptimization_ppo.py

The PPO half of Coste et al. (2023) (algorithms.md §3, §5) on the synthetic gold task,
version 2 (gold turns inside the base policy's distribution on two features):

1. For every seed, one K-member proxy ensemble (``experiments/proxies.py``, kind
   ``proxy.kind``) is trained with label noise and shared by every method of the seed.
2. Base-policy samples on fresh prompts give the gold baseline, UWO's λ (scaled to the
   members' measured variance) and the ensemble precondition.
3. PPO runs once per method against that ensemble, members normalised on base-policy
   samples by the trainer (``reward.member_norm``): "single" is member 0 alone, "mean",
   "wco" and "uwo" combine all members; the ``penalised`` objectives run again with a small
   fixed KL penalty; the control runs PPO against the gold reward itself. Every iteration
   logs gold and the KL of the policy's samples from the reference.
4. ``experiments/ppo_analysis.py`` reads gold off each trajectory at common KL values and
   turns the runs into intervals, paired differences with the single RM (Holm-corrected),
   preconditions, controls and verdicts.
Writes results.md/.csv, curves.csv, results.json and gold_vs_kl.png into the workdir.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import bon_analysis, cli, gold_ppo, ppo_analysis, proxies, report  # noqa: E402
from experiments.overoptimization_bon import trained_features  # noqa: E402
from rmjax.configs import rl as rl_configs  # noqa: E402
from rmjax.rl import best_of_n, build, rewards  # noqa: E402
from rmjax.rl import trainer as ppo_trainer  # noqa: E402
from rmjax.rm import reward_source  # noqa: E402
from rmjax.runtime.metrics import read_metrics  # noqa: E402
from rmjax.tasks import preference as synthetic  # noqa: E402

LOGGED = ("gold", "score", "kl", "kl_k2", "response_length")  # per iteration
BASE_STREAM = 4000  # folded into a seed's key: its base-policy prompts and samples


def apply_scale(config) -> ml_collections.ConfigDict:
  """A copy of ``config`` with its size fields multiplied by ``config.scale``."""
  c = ml_collections.ConfigDict(config.to_dict())
  s = int(c.scale)
  if s < 1:
    raise ValueError(f"scale={c.scale} must be an integer >= 1")
  for section, name in [("base", "prompts"), ("norm", "prompts"), ("task", "num_train_pairs")]:
    c[section][name] *= s
  c.proxy.pretrain.sequences *= s
  c.ppo.rl.prompts *= s
  for name in ("d_model", "d_ff", "n_heads", "n_kv_heads"):
    c.proxy.model[name] *= s
  return c


def methods(c) -> dict[str, tuple[str, float]]:
  """{method: (objective, KL coefficient)}: the objectives unpenalised, then the penalised
  ones ("uwo+kl0.01"). The gold control is run apart."""
  for name in (*c.objectives, *c.penalised):
    if name not in ("single", "mean", "wco", "uwo"):
      raise ValueError(f"objective {name!r} is not one of single, mean, wco, uwo")
  if "single" not in c.objectives:
    raise ValueError("objectives must include 'single': every method is compared with it")
  out = {name: (name, 0.0) for name in c.objectives}
  out.update({f"{name}+kl{coef:g}": (name, float(coef))
              for name in c.penalised for coef in c.kl_coefs})
  return out


def merge(base, overrides) -> None:
  """Writes the leaves of the nested ``overrides`` into ``base`` in place."""
  for name, value in overrides.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      merge(base[name], value)
    else:
      base[name] = value


def ppo_config(c, objective: str, kl_coef: float, uwo_lam: float, seed: int, workdir: str,
               member_norm: bool = True) -> ml_collections.ConfigDict:
  """The ``rmjax rl`` config of one run: ppo.py's defaults, ``c.ppo`` over them."""
  p = rl_configs.get_config()
  merge(p, c.ppo)
  p.seed = seed
  episodes = p.rl.prompts * p.rl.samples_per_prompt  # the trainer samples in rollouts
  p.reward.update(workdirs=(), objective=objective, uwo_lam=uwo_lam, member_norm=member_norm,
                  norm_batches=max(1, -(-c.norm.prompts * c.norm.samples // episodes)))
  p.kl.update(adaptive=False, coef=kl_coef)
  n = p.rl.iterations
  p.train.update(workdir=workdir, log_every=max(1, n // 4), save_every=n, keep_checkpoints=1)
  return p


def read_curves(workdir: str) -> dict:
  """{metric: [iterations]} of a PPO run's metrics.jsonl."""
  rows = sorted((r for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
                 if r.get("split") == "train"), key=lambda r: r["step"])
  return {k: np.asarray([r[k] for r in rows], np.float64) for k in LOGGED}


def base_samples(c, task, scorer, seed: int) -> dict:
  """Gold [P, N] and members [P, N, K] of base-policy samples on the seed's fresh prompts."""
  key = jax.random.fold_in(jax.random.key(seed), BASE_STREAM)
  prompts, plen = task.sample_prompts(jax.random.fold_in(key, 0), c.base.prompts)
  prompt_mask = np.arange(prompts.shape[1])[None] < plen[:, None]

  @jax.jit
  def score(tokens, mask, prompt_len):
    return {"gold": task.gold_reward(tokens, mask, prompt_len)["total"],
            "members": scorer(tokens, mask)}

  return best_of_n.best_of_n_scores(jax.random.fold_in(key, 1), task.policy, task.sampling,
                                    prompts, prompt_mask, c.base.samples, score)


def ensemble_facts(c, base: dict) -> dict:
  """UWO's λ and the per-prompt disagreement/error correlations, from the base samples
  with members normalised as the trainer normalises them."""
  (members,) = rewards.normalize_members([base["members"]],
                                         rewards.member_stats([base["members"]]))
  variance = float(np.mean(np.var(members, axis=-1)))
  spread = float(np.std(members.mean(-1)))
  corr = [bon_analysis.disagreement_correlation(members[p], base["gold"][p])
          for p in range(len(members))]
  return {"uwo_lam": c.uwo_ratio * spread / max(variance, 1e-12), "member_variance": variance,
          "mean_spread": spread, "disagreement_error_corr": corr,
          "base_gold": np.asarray(base["gold"]).mean(-1)}


def run_one(p, scorer, task, critic) -> tuple[dict, float]:
  """(curves, wall seconds) of one PPO run in a fresh workdir."""
  start = time.time()
  shutil.rmtree(p.train.workdir, ignore_errors=True)  # never resume a run of another config
  ppo_trainer.train(p, scorers=[scorer], task=task, critic_model=critic)
  return read_curves(p.train.workdir), time.time() - start


def run_seed(c, task, seed: int) -> dict:
  """The base samples' facts, every method's curves and costs, and the control of a seed."""
  start = time.time()
  kind, k = c.proxy.kind, int(c.proxy.k)
  scorer, evals = proxies.train_ensemble(c, task, c.label_noise, seed, kind)
  train_seconds = time.time() - start
  facts = ensemble_facts(c, base_samples(c, task, scorer, seed))
  print(f"seed {seed}: {k} {kind} members in {train_seconds:.0f}s, gold agreement "
        f"{np.mean([e['gold_agreement'] for e in evals]):.3f}; UWO lambda "
        f"{facts['uwo_lam']:.3g}", flush=True)
  source = reward_source.FunctionSource(scorer, task.cfg.vocab_size, k,
                                        name=f"{kind} proxy ensemble")
  critic = build.first_member(reward_source.from_workdir(
      proxies.member_workdir(c, kind, c.label_noise, seed, 0)))
  out = {"curves": {}, "seconds": {}, "evals": evals, "train_seconds": train_seconds,
         **facts}
  runs = {name: (source, task, ppo_config(c, objective, coef, facts["uwo_lam"], seed,
                                          os.path.join(c.workdir, "ppo", f"{name}_seed{seed}")))
          for name, (objective, coef) in methods(c).items()}
  runs[ppo_analysis.CONTROL] = (gold_ppo.source(task), gold_ppo.rollout(task), ppo_config(
      c, "mean", 0.0, 0.0, seed, os.path.join(c.workdir, "ppo", f"gold_seed{seed}"),
      member_norm=False))
  for name, (scores, rollout, p) in runs.items():
    out["curves"][name], out["seconds"][name] = run_one(p, scores, rollout, critic)
    curve = out["curves"][name]
    print(f"seed {seed} {name}: {out['seconds'][name]:.0f}s, gold {curve['gold'][0]:.3f} -> "
          f"{curve['gold'][-5:].mean():.3f}, KL {curve[c.kl_metric][-5:].mean():.3f}",
          flush=True)
  return out


def run(config) -> dict:
  """The whole experiment; returns the summary (also written to the workdir)."""
  start = time.time()
  c = apply_scale(config)
  methods(c)  # refuse a bad method list before any training
  os.makedirs(c.workdir, exist_ok=True)
  task = synthetic.build_task(synthetic.SyntheticConfig(**c.task.to_dict()))
  per_seed = [run_seed(c, task, seed) for seed in c.seeds]
  summary = ppo_analysis.summarise(c, per_seed, task.turns, trained_features(c, task))
  summary["seconds"] = time.time() - start
  paths = ppo_analysis.write_outputs(c, summary)
  report.announce(paths, ppo_analysis.verdict_lines(summary), summary["seconds"])
  return summary


if __name__ == "__main__":
  cli.main(run)
