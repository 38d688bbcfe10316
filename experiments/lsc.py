"""Transforming and combining rewards in PPO (Wang et al. 2024, algorithms.md §4).

  python experiments/lsc.py --config=experiments/configs/lsc.py

On the synthetic gold task (rmjax/tasks/preference.py, version 2 by default), for every seed:

1. Reward models are trained with ``rm_trainer.train`` on pairs labelled by the gold total
   (for (a)) and by each property of ``config.properties`` (for (b)); every labelling uses
   the same task, so the policy, prompts and gold reward are shared. Each is scored on the
   held-out pairs against the ordering its own gold property gives them (the precondition).
2. Four PPO runs (``ppo_trainer.train``), identical except for the reward:
   (a) "raw": the total-labelled model's score; "lsc": log σ(r − r_ref(x)), r_ref the
       per-prompt 0.85 quantile of the scores of reference-policy samples;
   (b) "sum": the two property models' scores added; "and": Σ_j log σ(r_j − r_j^ref(x)).
3. The final policy of every run, and the base policy, answer the same evaluation prompts
   (fixed across seeds) ``eval.samples`` times each with the same sampling key within a
   seed; the items are the per-prompt means of the gold terms, the features and the proxy
   scores. Gains are the final policy's minus the base policy's on the same prompt (for
   (b) divided by each property's base-policy spread).
4. Intervals: ``stats.hierarchical_bootstrap`` over [seeds, prompts] per method, and
   ``stats.paired_difference`` of each method against its baseline (lsc − raw on the gold
   gain, and − sum on the worse property's standardised gain), Holm-corrected over the two
   claims. The worse property is the minimum over properties of the mean gain per seed
   (a statistic of several item columns, bootstrapped with one index per item).
5. Control: PPO with the gold total itself as the reward (prompts of the task's largest
   length, so a scorer of (tokens, mask) knows where the response starts) must raise gold
   on held-out prompts; it fails if training, checkpoint reading, sampling or gold scoring
   is broken. A failed control turns every verdict into "harness broken: ...".

Writes results.md/.csv (preconditions and controls first), curves.csv, results.json and
two PNGs (a_raw_vs_lsc.png, b_sum_vs_and.png) into the workdir and prints the verdicts.
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
from experiments import cli, gold_ppo, report, stats  # noqa: E402
from rmjax.configs import rl as ppo_defaults  # noqa: E402
from rmjax.configs import train_rm  # noqa: E402
from rmjax.data import schema  # noqa: E402
from rmjax.models import lora  # noqa: E402
from rmjax.models.sampler import SamplingConfig, generate  # noqa: E402
from rmjax.parallel.sharding import to_host  # noqa: E402
from rmjax.rl import build  # noqa: E402
from rmjax.rl import trainer as ppo_trainer  # noqa: E402
from rmjax.rl.best_of_n import right_padded  # noqa: E402
from rmjax.rm import reward_source  # noqa: E402
from rmjax.rm import trainer as rm_trainer  # noqa: E402
from rmjax.runtime.metrics import read_metrics  # noqa: E402
from rmjax.tasks import preference as synthetic  # noqa: E402

# arm -> (comparison, labellings of its reward models, reward.transform)
ARMS = {"raw": ("a", "total", "none"), "lsc": ("a", "total", "lsc"),
        "sum": ("b", "properties", "none"), "and": ("b", "properties", "lsc")}
LABELS = {"raw": "raw reward", "lsc": "LSC log σ(r − r_ref)", "sum": "raw sum",
          "and": "AND Σ log σ(r_j − r_j,ref)"}
# claim -> (method, baseline, metric, the sign Wang et al. claim for method − baseline)
CLAIMS = {"lsc-raw": ("lsc", "raw", "gold_gain", 1),
          "and-sum": ("and", "sum", "min_std_gain", 1)}
EVAL_PROMPT_STREAM = 3000  # folded into the task seed's key: the evaluation prompts
EVAL_SAMPLE_STREAM = 2**31  # folded into a seed's key: the evaluation samples
CONTROL = "gold_ppo_raises_gold"


# --- pure helpers ---------------------------------------------------------------------------

def apply_scale(config) -> ml_collections.ConfigDict:
  """A copy of ``config`` with its size fields multiplied by ``config.scale``."""
  c = ml_collections.ConfigDict(config.to_dict())
  s = c.scale
  if int(s) != s or s < 1:
    raise ValueError(f"scale={c.scale} must be an integer >= 1")
  s = int(s)
  for section, name in [("task", "num_train_pairs"), ("task", "num_eval_pairs"),
                        ("eval", "prompts")]:
    c[section][name] *= s
  c.base_samples *= s
  c.rm.train.steps *= s
  c.rm.model.d_model *= s
  c.rm.model.d_ff *= s
  c.ppo.rl.prompts *= s
  return c


def agreement(r_chosen, r_rejected, g_chosen, g_rejected) -> np.ndarray:
  """Per pair, whether a reward model orders it as the gold property does, on the pairs
  whose gold differs (a gold tie has no order to agree with): 1 same order, 0.5 a reward
  tie, 0 the opposite. All inputs [N] -> [M ≤ N] float64."""
  r = np.asarray(r_chosen, np.float64) - np.asarray(r_rejected, np.float64)
  g = np.asarray(g_chosen, np.float64) - np.asarray(g_rejected, np.float64)
  if r.shape != g.shape or r.ndim != 1:
    raise ValueError(f"r_chosen, g_chosen: expected equal [N] shapes, got {r.shape}, {g.shape}")
  keep = g != 0
  return np.where(r[keep] == 0, 0.5, (np.sign(r[keep]) == np.sign(g[keep])).astype(np.float64))


def item_index(num_seeds: int, num_items: int) -> np.ndarray:
  """[seeds, items] float64 with entry (s, i) = s·items + i: each item's position in the
  flattened [seeds·items] columns, so a bootstrap of these indices resamples several
  per-item columns together (``min_of_means``)."""
  return np.arange(num_seeds * num_items, dtype=np.float64).reshape(num_seeds, num_items)


def min_of_means(columns):
  """A ``stats`` bootstrap statistic over item indices (``item_index``): ``columns``
  [C, seeds·items] per-item values of C properties; ``statistic(x [n, items], axis=-1)``
  -> [n], the minimum over the C properties of the mean of each at the indices ``x``."""
  columns = np.asarray(columns, np.float64)

  def statistic(x, axis=-1):
    if axis not in (-1, np.ndim(x) - 1):
      raise ValueError(f"axis={axis}: min_of_means reduces the last axis")
    return columns[:, np.asarray(x).astype(np.int64)].mean(-1).min(0)

  return statistic


def difference_of(stat_a, stat_b):
  """The statistic ``stat_a − stat_b`` of the same resampled items."""
  return lambda x, axis=-1: stat_a(x, axis=axis) - stat_b(x, axis=axis)


def ppo_rm_evaluations(iterations: int, prompts: int, samples_per_prompt: int,
                       lsc_samples: int, num_rms: int, transform: str) -> int:
  """Sequences scored by a reward model in one PPO run: every rollout episode by each of
  its ``num_rms`` models, and for "lsc" also every reference sample behind r_ref."""
  per_prompt = samples_per_prompt + (lsc_samples if transform == "lsc" else 0)
  return iterations * prompts * per_prompt * num_rms


def per_prompt(values, samples: int) -> np.ndarray:
  """[P·samples] values, prompt-major (each prompt's samples adjacent) -> [P] means."""
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or values.size % samples:
    raise ValueError(f"values: expected [P*{samples}], got shape {values.shape}")
  return values.reshape(-1, samples).mean(1)


def decide(interval: dict, expected_sign: int, precondition_ok: bool, holm_entry: dict,
           harness: str | None) -> dict:
  """{"verdict", "reason"} of one claim: "harness broken: ..." when a control failed; else
  ``stats.verdict`` of the interval, demoted to NOT_REPRODUCED when the interval lies on
  the claimed side but Holm's correction over the claims does not reject."""
  where = (f"interval [{interval['low']:+.3f}, {interval['high']:+.3f}], mean "
           f"{interval['mean']:+.3f}, expected sign {expected_sign:+d}, Holm-adjusted p "
           f"{holm_entry['p_adjusted']:.3g}")
  if harness:
    return {"verdict": harness, "reason": f"a control failed, so no finding; {where}"}
  v = stats.verdict(interval, expected_sign, precondition_ok)
  if v == stats.NOT_TESTABLE:
    return {"verdict": v, "reason": "a reward model failed its agreement precondition; " + where}
  if v == stats.REPRODUCED and not holm_entry["reject"]:
    return {"verdict": stats.NOT_REPRODUCED,
            "reason": "the interval excludes 0 but Holm's correction does not reject; " + where}
  return {"verdict": v, "reason": where}


def smooth(x: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average along the last axis (shorter windows at the start)."""
  cums = np.cumsum(x, axis=-1)
  out = cums.copy()
  out[..., window:] = cums[..., window:] - cums[..., :-window]
  return out / np.minimum(np.arange(1, x.shape[-1] + 1), window)


def property_values(rows, terms) -> np.ndarray:
  """Per-iteration gold of a property (the sum of its gold terms) [iterations]."""
  if terms == "total":
    return np.array([r["gold"] for r in rows])
  return np.array([sum(r[f"gold_{t}"] for t in terms.split("+")) for r in rows])


# --- configs --------------------------------------------------------------------------------

def override(dst, src) -> None:
  """Recursively set ``src``'s fields on the ConfigDict ``dst``."""
  for name, value in src.items():
    if isinstance(value, ml_collections.ConfigDict):
      override(dst[name], value)
    else:
      dst[name] = value


def rm_config(c, label_by: str, seed: int, workdir: str) -> ml_collections.ConfigDict:
  """``train-rm``'s defaults under ``c.rm``, on the task labelled by ``label_by``."""
  t = train_rm.get_config()
  override(t, c.rm)
  t.data.synthetic = ml_collections.ConfigDict({**c.task.to_dict(), "label_by": label_by})
  t.seed = seed
  steps = t.train.steps
  t.train.update(workdir=workdir, eval_every=steps, save_every=steps,
                 log_every=max(1, steps // 4))
  return t


def ppo_config(c, rm_dirs, transform: str, seed: int, workdir: str, iterations: int = 0):
  """``rmjax rl``'s defaults under ``c.ppo`` with the given reward models and transform
  (and ``iterations`` in place of ``c.ppo.rl.iterations`` unless 0)."""
  p = ppo_defaults.get_config()
  override(p, c.ppo)
  p.reward.update(workdirs=tuple(rm_dirs), transform=transform)
  p.seed = seed
  p.rl.iterations = iterations = iterations or p.rl.iterations
  p.train.update(workdir=workdir, log_every=max(1, iterations // 4), save_every=iterations,
                 keep_checkpoints=1)
  return p


def fresh(workdir: str) -> str:
  """An empty ``workdir``: never resume a run of another config."""
  shutil.rmtree(workdir, ignore_errors=True)
  return workdir


# --- the world: base statistics, evaluation, the gold control -------------------------------

def base_statistics(c, task) -> dict:
  """{property: (mean, std)} of each property (and the total) on base-policy samples."""
  keys = jax.random.split(jax.random.fold_in(jax.random.key(c.task.seed), 2000))
  prompts, plen = task.sample_prompts(keys[0], c.base_samples)
  tokens, mask = task.sample_responses(keys[1], prompts, plen)
  gold = task.score(tokens, mask, plen)
  return {prop: (float(np.mean(v)), float(np.std(v)))
          for prop, v in property_gold(c, gold).items()}


def property_gold(c, gold: dict) -> dict:
  """{"total", each property}: the gold total and the sum of each property's terms [B]."""
  return {"total": gold["total"],
          **{p: sum(gold[t] for t in p.split("+")) for p in c.properties}}


def eval_sampling(c, task) -> SamplingConfig:
  """How the evaluation samples: as PPO's rollouts do (``c.ppo``'s temperature and top-k/p)."""
  p = ppo_defaults.get_config()
  override(p, c.ppo)
  return SamplingConfig(max_new_tokens=p.rl.max_new_tokens or task.cfg.max_response_len,
                        temperature=p.rl.temperature, top_k=p.rl.top_k, top_p=p.rl.top_p,
                        eos_id=synthetic.EOS, pad_id=synthetic.PAD)


def evaluate_policy(c, task, policy, sources: dict, key, prompts, plen) -> dict:
  """Per-prompt means [P] over ``c.eval.samples`` responses of ``policy`` to each prompt:
  the gold total and properties, the features, and the score of every named source."""
  samples = c.eval.samples
  tokens, lengths = np.repeat(prompts, samples, 0), np.repeat(plen, samples)
  prompt_mask = np.arange(tokens.shape[1])[None] < lengths[:, None]
  out = generate(policy, tokens, prompt_mask, key, eval_sampling(c, task))
  seq, seq_mask = (np.asarray(x) for x in to_host(right_padded(*out.sequences())))
  values = property_gold(c, task.score(seq, seq_mask, lengths))
  values.update(task.features(seq, seq_mask, lengths))
  for name, source in sources.items():
    values[f"proxy[{name}]"] = np.asarray(to_host(source(seq, seq_mask))).mean(-1)
  return {k: per_prompt(v, samples) for k, v in values.items()}


def gold_control(c, task, seed: int, critic_source, provenance_dir: str, prompts, plen, key):
  """PPO with the gold total as its reward on full-length prompts; (final − base) per-prompt
  gold on full-length evaluation prompts [P], and the run's wall seconds."""
  start = time.time()
  workdir = fresh(os.path.join(c.workdir, "ppo", f"control_gold_seed{seed}"))
  # workdirs only tells trained_policy which task the run's policy came from; the reward is gold.
  p = ppo_config(c, [provenance_dir], "none", seed, workdir, c.control_iterations)
  ppo_trainer.train(p, scorers=[gold_ppo.source(task)], task=gold_ppo.rollout(task),
                    critic_model=build.first_member(critic_source))
  actor = lora.merged(build.trained_policy(workdir))
  final = evaluate_policy(c, task, actor, {}, key, prompts, plen)
  base = evaluate_policy(c, task, task.policy, {}, key, prompts, plen)
  return final["total"] - base["total"], time.time() - start


# --- one seed -------------------------------------------------------------------------------

def rm_agreement(c, task, sources: dict) -> dict:
  """{labelling: per-pair agreement with its own gold property on held-out pairs}."""
  cfg = synthetic.SyntheticConfig(**c.task.to_dict())
  pairs = synthetic.make_split(cfg, "eval")
  plen = pairs["prompt_len"]
  sides = [(pairs[schema.CHOSEN_TOKENS], pairs[schema.CHOSEN_MASK]),
           (pairs[schema.REJECTED_TOKENS], pairs[schema.REJECTED_MASK])]
  gold = [property_gold(c, task.score(t, m, plen)) for t, m in sides]
  out = {}
  for name, source in sources.items():
    r = [np.asarray(to_host(source(t, m))).mean(-1) for t, m in sides]
    out[name] = agreement(r[0], r[1], gold[0][name], gold[1][name])
  return out


def read_curves(c, workdir: str, num_rms: int) -> dict:
  """Per-iteration training curves of a PPO run (from its metrics.jsonl)."""
  rows = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
          if r.get("split") == "train"]
  curve = {"kl": np.array([r["kl"] for r in rows]),
           "length": np.array([r["response_length"] for r in rows]),
           "gold": property_values(rows, "total")}
  for prop in c.properties:
    curve[prop] = property_values(rows, prop)
  for j in range(num_rms):
    curve[f"proxy_{j}"] = np.array([r[f"proxy_{j}"] for r in rows])
  return curve


def run_seed(c, task, seed: int, eval_prompts, control_prompts, with_control: bool) -> dict:
  """Everything one seed measures: RM agreement, curves, per-prompt evaluations, costs."""
  out = {"rm_seconds": {}, "ppo_seconds": {}, "eval_seconds": {}, "curves": {}, "eval": {}}
  rm_dirs = {}
  for label_by in ("total", *c.properties):
    start = time.time()
    workdir = fresh(os.path.join(c.workdir, "rms", f"{label_by}_seed{seed}"))
    acc = rm_trainer.train(rm_config(c, label_by, seed, workdir))["eval"]["accuracy"]
    rm_dirs[label_by] = workdir
    out["rm_seconds"][label_by] = time.time() - start
    print(f"seed {seed}: RM labelled by {label_by} trained in "
          f"{out['rm_seconds'][label_by]:.0f}s, eval accuracy {acc:.3f}", flush=True)
  sources = {name: reward_source.from_workdir(d) for name, d in rm_dirs.items()}
  out["agreement"] = rm_agreement(c, task, sources)
  key = jax.random.fold_in(jax.random.key(seed), EVAL_SAMPLE_STREAM)
  start = time.time()
  out["eval"]["base"] = evaluate_policy(c, task, task.policy, sources, key, *eval_prompts)
  out["eval_seconds"]["base"] = time.time() - start
  for arm, (_, labelling, transform) in ARMS.items():
    start = time.time()
    names = ["total"] if labelling == "total" else list(c.properties)
    workdir = fresh(os.path.join(c.workdir, "ppo", f"{arm}_seed{seed}"))
    ppo_trainer.train(ppo_config(c, [rm_dirs[n] for n in names], transform, seed, workdir))
    out["ppo_seconds"][arm] = time.time() - start
    start = time.time()
    actor = lora.merged(build.trained_policy(workdir))
    out["eval"][arm] = evaluate_policy(c, task, actor, {n: sources[n] for n in names}, key,
                                       *eval_prompts)
    out["eval_seconds"][arm] = time.time() - start
    out["curves"][arm] = read_curves(c, workdir, len(names))
    gain = out["eval"][arm]["total"].mean() - out["eval"]["base"]["total"].mean()
    print(f"seed {seed}: PPO {arm} in {out['ppo_seconds'][arm]:.0f}s: held-out gold gain "
          f"{gain:+.2f}, KL {out['curves'][arm]['kl'][-1]:.2f}", flush=True)
  if with_control:
    out["control_gain"], out["control_seconds"] = gold_control(
        c, task, seed, sources["total"], rm_dirs["total"], *control_prompts, key)
    print(f"seed {seed}: control (PPO on gold) in {out['control_seconds']:.0f}s: held-out "
          f"gold gain {out['control_gain'].mean():+.2f}", flush=True)
  return out


# --- summaries ------------------------------------------------------------------------------

def items(c, per_seed: list[dict], base_stats: dict) -> dict:
  """{arm: {metric: [seeds, prompts]}} of the per-prompt figures, gains against the base
  policy's samples of the same prompts."""
  out = {}
  for arm, (_, labelling, _) in ARMS.items():
    names = ["total"] if labelling == "total" else list(c.properties)
    stack = lambda k, who=arm: np.stack([s["eval"][who][k] for s in per_seed])
    m = {"gold_gain": stack("total") - stack("total", "base"),
         "length": stack("length"), "markers": stack("markers")}
    for i, prop in enumerate(c.properties):
      m[f"std_gain_{i}"] = (stack(prop) - stack(prop, "base")) / base_stats[prop][1]
    for j, name in enumerate(names):
      m[f"proxy_gain_{j}"] = stack(f"proxy[{name}]") - stack(f"proxy[{name}]", "base")
    out[arm] = m
  out["base"] = {k: np.stack([s["eval"]["base"][k] for s in per_seed])
                 for k in ("length", "markers")}
  return out


def min_columns(c, m: dict) -> np.ndarray:
  """[properties, seeds·prompts]: each property's standardised gain, flattened."""
  return np.stack([m[f"std_gain_{i}"].ravel() for i in range(len(c.properties))])


def clean(d: dict) -> dict:
  """A bootstrap record with a non-finite effect size (constant differences) as None."""
  e = d.get("effect_size")
  return {**d, "effect_size": e if e is None or np.isfinite(e) else None}


def summarise(c, per_seed: list[dict], base_stats: dict) -> dict:
  """Per-method intervals, paired differences against each baseline, and the two claims'
  tests with Holm's correction."""
  boot = dict(num_resamples=c.num_resamples)
  it = items(c, per_seed, base_stats)
  num_seeds, num_prompts = it["raw"]["gold_gain"].shape
  index = item_index(num_seeds, num_prompts)
  methods = {}
  for arm, m in it.items():
    methods[arm] = {k: stats.hierarchical_bootstrap(v, **boot) for k, v in m.items()}
    if arm == "base":
      continue
    methods[arm]["min_std_gain"] = stats.hierarchical_bootstrap(
        index, statistic=min_of_means(min_columns(c, m)), **boot)
    curves = {k: np.stack([s["curves"][arm][k] for s in per_seed])
              for k in per_seed[0]["curves"][arm]}
    w = c.final_window
    gold = smooth(curves["gold"], w)
    for name, values in (("kl", curves["kl"][:, -w:].mean(1)),
                         ("gold_drop_from_peak", gold.max(1) - gold[:, -1])):
      mean, low, high = stats.t_interval(values)
      methods[arm][name] = {"mean": float(mean), "low": float(low), "high": float(high),
                            "per_seed": values.tolist(), "interval": "t over seeds"}
  differences = {}
  for claim, (new, old, _, _) in CLAIMS.items():
    a, b = it[new], it[old]
    differences[claim] = {k: clean(stats.paired_difference(a[k], b[k], **boot))
                          for k in a if k in b}
    differences[claim]["min_std_gain"] = {**stats.paired_difference(
        index, np.zeros_like(index), **boot, statistic=difference_of(
            min_of_means(min_columns(c, a)), min_of_means(min_columns(c, b)))),
        "effect_size": None}  # d_z is a per-item figure; a min of means has none
  holm = stats.holm({k: differences[k][CLAIMS[k][2]]["p_value"] for k in CLAIMS},
                    alpha=c.alpha)
  return {"items": it, "methods": methods, "differences": differences, "holm": holm}


def preconditions(c, per_seed: list[dict]) -> list[dict]:
  """Per labelling: its reward model orders held-out pairs as its own gold property does,
  better than chance by ``c.precondition_margin`` (the interval's lower end)."""
  out = []
  for name in ("total", *c.properties):
    rows = [s["agreement"][name] for s in per_seed]
    if min(len(r) for r in rows) == 0:
      out.append(stats.precondition(f"rm_agreement[{name}]", None, False,
                                    "no held-out pair has different gold on this property"))
      continue
    ci = stats.hierarchical_bootstrap(rows, num_resamples=c.num_resamples)
    need = 0.5 + c.precondition_margin
    out.append(stats.precondition(
        f"rm_agreement[{name}]", ci, ci["low"] > need,
        f"held-out gold agreement of the RM labelled by {name} (pairs with unequal gold, "
        f"seeds x pairs bootstrap): {ci['mean']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]; "
        f"needs the lower end above {need:.2f}"))
  return out


def controls(c, per_seed: list[dict]) -> list[dict]:
  """The gold-PPO control: its held-out gold gain's interval lies above 0."""
  rows = [s["control_gain"] for s in per_seed if "control_gain" in s]
  ci = stats.hierarchical_bootstrap(rows, num_resamples=c.num_resamples)
  return [stats.control(
      CONTROL, ci["low"] > 0,
      f"PPO with the gold total as reward (same settings, {len(rows)} seed(s)) raises "
      f"held-out gold by {ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}] over the base "
      "policy; needs the interval above 0", ci)]


def cost(c, per_seed: list[dict]) -> dict:
  """Wall seconds per method (PPO and its evaluation, summed over seeds), reward-model
  evaluations (sequences scored during PPO, summed over seeds), and the shared parts."""
  p = ppo_defaults.get_config()
  override(p, c.ppo)
  out = {}
  for arm, (_, labelling, transform) in ARMS.items():
    rms = 1 if labelling == "total" else len(c.properties)
    out[arm] = {
        "ppo_seconds": float(sum(s["ppo_seconds"][arm] for s in per_seed)),
        "eval_seconds": float(sum(s["eval_seconds"][arm] for s in per_seed)),
        "rm_evaluations": len(per_seed) * ppo_rm_evaluations(
            p.rl.iterations, p.rl.prompts, p.rl.samples_per_prompt, p.reward.lsc_samples,
            rms, transform),
        "reward_models": ["total"] if labelling == "total" else list(c.properties)}
  out["shared"] = {
      "rm_train_seconds": {n: float(sum(s["rm_seconds"][n] for s in per_seed))
                           for n in ("total", *c.properties)},
      "base_eval_seconds": float(sum(s["eval_seconds"]["base"] for s in per_seed)),
      "control_seconds": float(sum(s.get("control_seconds", 0.0) for s in per_seed))}
  return out


def verdicts(c, summary, pre, ctl) -> dict:
  """claim -> {"verdict", "reason"} from each claim's paired interval."""
  ok = {p["name"]: p["ok"] for p in pre}
  needs = {"lsc-raw": [ok["rm_agreement[total]"]],
           "and-sum": [ok[f"rm_agreement[{p}]"] for p in c.properties]}
  harness = stats.harness_message(ctl)
  return {claim: decide(summary["differences"][claim][metric], sign, all(needs[claim]),
                        summary["holm"][claim], harness)
          for claim, (_, _, metric, sign) in CLAIMS.items()}


# --- outputs --------------------------------------------------------------------------------

def fmt(x: dict) -> str:
  return f"{x['mean']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]"


TABLE = [("comparison", "comparison"), ("method", "reward"), ("gold_gain", "gold gain"),
         ("std_gain_0", "std gain P0"), ("std_gain_1", "std gain P1"),
         ("min_std_gain", "min std gain"), ("proxy_gain_0", "proxy gain (RM 0)"),
         ("length", "response length"), ("markers", "markers"), ("kl", "KL (train)"),
         ("gold_drop_from_peak", "gold drop from peak (train)")]


def header_lines(c, pre, ctl, verdict) -> list[str]:
  """The text that opens results.md and the printed results: preconditions, controls,
  then the verdicts."""
  lines = report.check_lines(pre, ctl)
  lines.append(f"Verdicts (paired differences over {len(c.seeds)} seed(s) x {c.eval.prompts} "
               f"held-out prompts; Holm-corrected over {len(CLAIMS)} claims at alpha "
               f"{c.alpha}):")
  for claim, (_, _, metric, _) in CLAIMS.items():
    lines.append(f"  {claim} on {metric}: {verdict[claim]['verdict']} "
                 f"({verdict[claim]['reason']})")
  return lines


def write_outputs(c, summary, base, pre, ctl, verdict, costs, per_seed, seconds) -> list[str]:
  """results.md/.csv, curves.csv, results.json and the two PNGs."""
  rows, curve_rows = [], []
  for arm, (comparison, _, _) in ARMS.items():
    e = summary["methods"][arm]
    rows.append({"comparison": comparison, "method": arm,
                 **{k: fmt(e[k]) for k, _ in TABLE[2:] if k in e}})
  for name, d in summary["differences"].items():
    rows.append({"comparison": "a" if name == "lsc-raw" else "b", "method": name,
                 **{k: fmt(d[k]) for k, _ in TABLE[2:] if k in d}})
  curves = {arm: {k: np.stack([s["curves"][arm][k] for s in per_seed])
                  for k in per_seed[0]["curves"][arm]} for arm in ARMS}
  for arm, e in curves.items():
    for key, values in e.items():
      mean, low, high = stats.t_interval(values)
      for i in range(values.shape[1]):
        curve_rows.append({"arm": arm, "metric": key, "iteration": i + 1, "mean": float(mean[i]),
                           "low": float(low[i]), "high": float(high[i])})
  stem = lambda name: os.path.join(c.workdir, name)
  header = dict(TABLE) | {"std_gain_0": f"std gain {c.properties[0]}",
                          "std_gain_1": f"std gain {c.properties[1]}"}
  paths = report.write_table(stem("results"), list(header.items()), rows)
  report.prepend(paths[0], header_lines(c, pre, ctl, verdict))
  paths += report.write_table(stem("curves"), [(k, k) for k in curve_rows[0]], curve_rows)[1:]
  paths.append(report.write_json(stem("results.json"), {
      "precondition": pre, "controls": ctl, "verdicts": verdict, "cost": costs,
      "methods": summary["methods"], "differences": summary["differences"],
      "holm": summary["holm"],
      "claims": {k: {"method": m, "baseline": b, "metric": x, "expected_sign": s}
                 for k, (m, b, x, s) in CLAIMS.items()},
      "seconds": seconds, "base_policy": base, "turns": per_seed[0]["turns"],
      "items": summary["items"], "curves_per_seed": curves, "config": c.to_dict(),
      "config_note": "sizes already multiplied by scale"}))
  paths += plots(c, curves, base)
  return paths


def plots(c, curves, base) -> list[str]:
  """Smoothed training curves against the arm's mean KL: (a) gold and proxy gains, (b)
  each property's standardised gain and their minimum."""
  w = c.final_window

  def series(arm, values):
    cur = curves[arm]
    kl = smooth(cur["kl"], w).mean(0)
    mean, low, high = stats.t_interval(smooth(values(cur), w))
    return report.Series(LABELS[arm], kl, mean, low, high)

  gold = lambda cur: cur["gold"] - base["total"][0]
  proxy = lambda cur: cur["proxy_0"] - cur["proxy_0"][:, :1]
  std = lambda i: lambda cur: (cur[c.properties[i]] - base[c.properties[i]][0]) / base[
      c.properties[i]][1]
  minimum = lambda cur: np.minimum(std(0)(cur), std(1)(cur))
  xlabel = f"KL to the reference (nats, seed mean; {w}-iteration moving averages)"
  path_a = report.plot_bands(
      os.path.join(c.workdir, "a_raw_vs_lsc.png"),
      [[[series(arm, f) for arm in ("raw", "lsc")]] for f in (gold, proxy)],
      ["(a) one reward model (total labels)"], xlabel,
      ["gold gain over the base policy", "raw proxy gain over iteration 1"])
  path_b = report.plot_bands(
      os.path.join(c.workdir, "b_sum_vs_and.png"),
      [[[series(arm, f) for arm in ("sum", "and")]] for f in (std(0), std(1), minimum)],
      ["(b) reward models of " + " and ".join(c.properties)], xlabel,
      [f"{c.properties[0]} (std gain)", f"{c.properties[1]} (std gain)", "min of the two"])
  return [path_a, path_b]


def run(config) -> dict:
  """The whole experiment; returns {"precondition", "controls", "verdicts", "cost", and the
  summary} (also written to the workdir)."""
  start = time.time()
  c = apply_scale(config)
  if len(c.properties) != 2:
    raise ValueError(f"properties={c.properties} must name two properties")
  if c.control_seeds < 1:
    raise ValueError(f"control_seeds={c.control_seeds} must be >= 1 (the harness control)")
  os.makedirs(c.workdir, exist_ok=True)
  task = synthetic.build_task(synthetic.SyntheticConfig(**c.task.to_dict()))
  base = base_statistics(c, task)
  key = jax.random.fold_in(jax.random.key(c.task.seed), EVAL_PROMPT_STREAM)
  eval_prompts = task.sample_prompts(key, c.eval.prompts)
  control_prompts = gold_ppo.full_length_prompts(task)(key, c.eval.prompts)
  per_seed = [run_seed(c, task, seed, eval_prompts, control_prompts, i < c.control_seeds)
              for i, seed in enumerate(c.seeds)]
  per_seed[0]["turns"] = task.turns
  summary = summarise(c, per_seed, base)
  pre, ctl = preconditions(c, per_seed), controls(c, per_seed)
  verdict = verdicts(c, summary, pre, ctl)
  costs = cost(c, per_seed)
  seconds = time.time() - start
  paths = write_outputs(c, summary, base, pre, ctl, verdict, costs, per_seed, seconds)
  report.announce(paths, header_lines(c, pre, ctl, verdict), seconds)
  return {"precondition": pre, "controls": ctl, "verdicts": verdict, "cost": costs, **summary}


if __name__ == "__main__":
  cli.main(run)
