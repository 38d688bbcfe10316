"""Reward-model overoptimisation under best-of-n, conservative ensembles and ensemble
diversity.

  python experiments/overoptimization_bon.py --config=experiments/configs/overoptimization_bon.py

The Gao et al. (2022) / Coste et al. (2023) protocol (algorithms.md §3) on the synthetic
gold task, version 2 (rmjax/tasks/preference.py: gold turns inside the base policy's
distribution on two features), with the ensembles of Eisenstein et al. (2023):

1. For every seed, label noise and ensemble kind (pretrain-diverse, finetune-diverse:
   ``experiments/proxies.py``), a K-member proxy ensemble is trained.
2. For every seed, N base-policy responses to each of P fresh prompts are sampled once
   and scored by the gold reward, by their length and by every member of every ensemble.
3. Best-of-n curves (the unbiased estimator, ``rmjax.objectives.bon``) per prompt of gold
   against KL_bon(n) for each objective: "single" (each member's own curve, averaged over
   members), "mean", "wco", and "uwo@s" with λ = s / (the members' mean variance).
4. ``experiments/bon_analysis.py`` turns the per-(seed, prompt) curves into intervals
   (hierarchical bootstrap: seeds, then prompts), paired differences with Holm's
   correction, Gao's fit, the preconditions, the controls and the verdicts.
Writes results.md/.csv, curves.csv, results.json and gold_vs_kl.png into the workdir.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# Run as a script, Python puts experiments/ itself on the path; the repo root makes the
# shared helpers importable as experiments.*.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import bon_analysis, cli, proxies, report  # noqa: E402
from rmjax.objectives import bon, bt  # noqa: E402
from rmjax.objectives import ensemble as objectives  # noqa: E402
from rmjax.rl import best_of_n, rewards  # noqa: E402
from rmjax.tasks import preference as synthetic  # noqa: E402

train_proxies = proxies.train_proxies  # the PPO study's entry point


def apply_scale(config) -> ml_collections.ConfigDict:
  """A copy of ``config`` with its size fields multiplied by ``config.scale``."""
  c = ml_collections.ConfigDict(config.to_dict())
  s = int(c.scale)
  if s < 1:
    raise ValueError(f"scale={c.scale} must be an integer >= 1")
  for section, name in [("bon", "num_prompts"), ("bon", "num_samples"), ("bon", "max_n"),
                        ("task", "num_train_pairs")]:
    c[section][name] *= s
  c.proxy.pretrain.sequences *= s
  for name in ("d_model", "d_ff", "n_heads", "n_kv_heads"):
    c.proxy.model[name] *= s
  return c


def n_grid(c) -> np.ndarray:
  """1, 2, 4, ..., max_n."""
  max_n, n = int(c.bon.max_n), int(c.bon.num_samples)
  if max_n & (max_n - 1) or not 1 <= max_n <= n:
    raise ValueError(f"bon.max_n={max_n} must be a power of 2 in [1, num_samples={n}]")
  return 2 ** np.arange(int(np.log2(max_n)) + 1)


def objective_names(c) -> list[str]:
  return ["single", "mean", "wco"] + [f"uwo@{s:g}" for s in c.uwo_scales]


def ensemble_curves(c, members, gold, ns) -> tuple[dict, dict]:
  """({objective: {"gold", "proxy"}: [P, M]}, facts) of one ensemble's members [P, N, K]
  on the base-policy samples scored gold [P, N]. Members are normalised on these samples
  by the library's path (``rl.rewards``), as PPO normalises them; facts holds the mean
  member variance that scales UWO's λ and the disagreement/error correlation per prompt."""
  (members,) = rewards.normalize_members([members], rewards.member_stats([members]))
  variance = float(np.mean(np.var(members, axis=-1)))
  curves = {}
  singles = [bon.best_of_n_curves(members, gold, ns, "single", normalize=False, member=m)
             for m in range(members.shape[-1])]
  curves["single"] = {k: np.mean([np.asarray(s[k]) for s in singles], 0)
                      for k in ("gold", "proxy")}
  for name in objective_names(c)[1:]:
    objective, _, scale = name.partition("@")
    kwargs = objectives.options(objective, uwo_lam=float(scale) / max(variance, 1e-12)
                                if scale else 0.0)
    cur = bon.best_of_n_curves(members, gold, ns, objective, normalize=False, **kwargs)
    curves[name] = {k: np.asarray(cur[k]) for k in ("gold", "proxy")}
  corr = [bon_analysis.disagreement_correlation(members[p], gold[p])
          for p in range(len(gold))]
  return curves, {"member_variance": variance, "disagreement_error_corr": corr}


def control_curves(gold, length, ns) -> dict:
  """Best-of-n curves [P, M] of the two controls: the gold reward itself, and a reward
  that is pure response length."""
  out = {}
  for name, proxy in (("gold", gold), ("length", length.astype(np.float32))):
    est = bon.best_of_n_estimate(jnp.asarray(proxy), {"gold": jnp.asarray(gold),
                                                      "proxy": jnp.asarray(proxy)}, ns)
    out[name] = {k: np.asarray(v) for k, v in est.items()}
  return out


def run_seed(c, task, prompts, prompt_mask, ns, seed: int) -> dict:
  """Every curve, proxy evaluation and cost of one seed."""
  scorers, evals, cost = {}, {}, {}
  for kind in c.kinds:
    for noise in c.noise_levels:
      start = time.time()
      name = f"{kind}/{noise:g}"
      scorers[name], evals[name] = proxies.train_ensemble(c, task, noise, seed, kind)
      cost[name] = {"train_seconds": time.time() - start}
      agreement = np.mean([e["gold_agreement"] for e in evals[name]])
      print(f"seed {seed} {name}: {c.proxy.k} members in {time.time() - start:.0f}s, "
            f"mean gold agreement {agreement:.3f}", flush=True)

  @jax.jit
  def score(tokens, mask, prompt_len):
    out = {"gold": task.gold_reward(tokens, mask, prompt_len)["total"],
           "length": jnp.sum(mask, axis=1) - prompt_len}
    return out | {name: scorer(tokens, mask) for name, scorer in scorers.items()}

  start = time.time()
  scores = best_of_n.best_of_n_scores(
      jax.random.key(seed), task.policy, task.sampling, prompts, prompt_mask,
      c.bon.num_samples, score, chunk_size=c.bon.chunk_size)
  sample_seconds = time.time() - start
  print(f"seed {seed}: {prompts.shape[0]} x {c.bon.num_samples} responses sampled and "
        f"scored in {sample_seconds:.0f}s", flush=True)
  length = scores["length"].ravel().astype(np.float32)
  out = {"controls": control_curves(scores["gold"], scores["length"], ns), "ensembles": {},
         "evals": evals, "cost": cost, "sample_seconds": sample_seconds,
         # The length-bias diagnostic (reward vs response length) on the pure-length reward.
         "length_bias": float(bt.pearson_correlation(length, length))}
  for name in scorers:
    curves, facts = ensemble_curves(c, scores[name], scores["gold"], ns)
    members = scores[name].reshape(-1, scores[name].shape[-1])
    facts["length_correlation"] = [float(bt.pearson_correlation(members[:, m], length))
                                   for m in range(members.shape[-1])]
    out["ensembles"][name] = {"curves": curves, **facts}
  return out


def trained_features(c, task) -> dict:
  """The features and gold of the proxies' training responses (both sides of every pair)
  of the noise-free labelling: where the overoptimisation precondition is checked."""
  data = synthetic.make_split(synthetic.SyntheticConfig(**c.task.to_dict()), "train")
  feats, gold = {}, []
  for side in ("chosen", "rejected"):
    f = task.features(data[f"{side}_tokens"], data[f"{side}_mask"], data["prompt_len"])
    for key, value in f.items():
      feats.setdefault(key, []).append(value)
    gold.append(task.score(data[f"{side}_tokens"], data[f"{side}_mask"],
                           data["prompt_len"])["total"])
  return {**{k: np.concatenate(v) for k, v in feats.items()}, "gold": np.concatenate(gold)}


def run(config) -> dict:
  """The whole experiment; returns the summary (also written to the workdir)."""
  start = time.time()
  c = apply_scale(config)
  os.makedirs(c.workdir, exist_ok=True)
  ns = n_grid(c)
  task = synthetic.build_task(synthetic.SyntheticConfig(**c.task.to_dict()))
  key = jax.random.fold_in(jax.random.key(c.task.seed), c.bon.prompt_key)
  prompts, prompt_len = task.sample_prompts(key, c.bon.num_prompts)
  prompt_mask = np.arange(prompts.shape[1])[None] < prompt_len[:, None]
  per_seed = [run_seed(c, task, prompts, prompt_mask, ns, seed) for seed in c.seeds]
  summary = bon_analysis.summarise(c, per_seed, ns, task.turns, trained_features(c, task))
  summary["seconds"] = time.time() - start
  paths = bon_analysis.write_outputs(c, summary)
  report.announce(paths, bon_analysis.verdict_lines(summary), summary["seconds"])
  return summary


if __name__ == "__main__":
  cli.main(run)
