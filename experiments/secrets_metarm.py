"""MetaRM on a proxy-shifted policy (Secrets of RLHF II §3.2), and per-pair gold agreement.

Part of ``experiments/secrets_rm.py`` (which trains the BT proxy this part starts from).
The shifted policy is best-of-n against the proxy: for every prompt, ``num_samples``
base-policy responses ranked by the proxy. Training prompts give MetaRM's meta set (the
proxy's top k each), held-out prompts the shifted test pairs (its top two, labelled by the
gold reward). MetaRM and BT are trained on the same data for the same steps (MetaRM adds
its meta step) and judged pair by pair on the same shifted test pairs.

The precondition is that the policy is shifted at all: the proxy score of the selected
responses must rise over the base policy's by ``min_shift`` base-policy standard
deviations (``score_shift``); the gold shift and the features' shift are stored with it.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from experiments import stats
from rmjax.commands import score_pairs
from rmjax.data import schema
from rmjax.rl import best_of_n
from rmjax.rm import load as load_rm
from rmjax.tasks import preference as synthetic


def gold_correct(model_delta, gold_delta) -> np.ndarray:
  """float [N]: 1.0 where sign(model Δ) == sign(gold Δ), else 0.0 (a tie agrees only with
  a tie, as ``rmjax.objectives.bt.gold_agreement``, whose mean this is)."""
  model_delta, gold_delta = np.asarray(model_delta), np.asarray(gold_delta)
  if model_delta.shape != gold_delta.shape or model_delta.ndim != 1:
    raise ValueError(f"model_delta, gold_delta: expected equal [N] shapes, got "
                     f"{model_delta.shape} and {gold_delta.shape}")
  return (np.sign(model_delta) == np.sign(gold_delta)).astype(np.float64)


def pair_correct(scorer, arrays: dict, batch_size: int = 256) -> np.ndarray:
  """float [N]: whether ``scorer``'s mean member reward orders each pair of ``arrays``
  (schema keys, gold_chosen/gold_rejected included) as the gold reward does."""
  deltas = score_pairs.member_deltas(scorer, arrays, batch_size, load_rm.single_device_mesh())
  gold = arrays[schema.GOLD_CHOSEN].astype(np.float64) - arrays[schema.GOLD_REJECTED]
  return gold_correct(deltas.astype(np.float64).mean(1), gold)


def score_shift(scores, top: int) -> np.ndarray:
  """float [P]: per prompt, how far the mean of its first ``top`` responses lies above the
  mean of all of them, in units of the standard deviation of all P·N scores.

  Args:
    scores: [P, N] scores (proxy or gold) of N responses per prompt, ranked best first by
      the selecting proxy.
    top: how many of the first responses the shifted policy keeps (1 <= top <= N).
  """
  s = np.asarray(scores, np.float64)
  if s.ndim != 2 or not 1 <= top <= s.shape[1]:
    raise ValueError(f"scores, top: need [P, N] scores and 1 <= top <= N, got {s.shape}, {top}")
  sd = s.std()
  return (s[:, :top].mean(1) - s.mean(1)) / (sd if sd > 0 else 1.0)


def ranked_samples(c, task, proxy, key, prompts: int) -> dict:
  """Base-policy responses to ``prompts`` fresh prompts, sorted by the proxy, best first:
  tokens/mask [P, N, T], gold/proxy [P, N], length/markers [P, N] (``task.features``)."""
  tokens, plen = task.sample_prompts(jax.random.fold_in(key, 0), prompts)
  prompt_mask = np.arange(tokens.shape[1])[None] < plen[:, None]

  @jax.jit
  def score(seq, mask, prompt_len):
    gold = task.gold_reward(seq, mask, prompt_len)["total"]
    return {"tokens": seq, "mask": mask, "gold": gold, "proxy": proxy(seq, mask).mean(1),
            "prompt_len": prompt_len}

  out = best_of_n.best_of_n_scores(jax.random.fold_in(key, 1), task.policy, task.sampling,
                                   tokens, prompt_mask, c.metarm.num_samples, score,
                                   chunk_size=c.metarm.chunk_size)
  p, n, t = out["tokens"].shape
  features = task.features(out["tokens"].reshape(p * n, t), out["mask"].reshape(p * n, t),
                           out.pop("prompt_len").reshape(p * n))
  out.update({k: v.reshape(p, n) for k, v in features.items()})
  order = np.argsort(-out["proxy"], axis=1, kind="stable")
  take = lambda x: np.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), 1)
  return {k: take(v) for k, v in out.items()}


def shifted_pairs(ranked: dict) -> dict:
  """The proxy's top two responses of each prompt as pairs (schema keys), dropping the
  prompts whose two have equal gold (identical responses: nothing to order)."""
  keep = ranked["gold"][:, 0] != ranked["gold"][:, 1]
  side = lambda x, j: x[keep, j]
  return {schema.CHOSEN_TOKENS: side(ranked["tokens"], 0),
          schema.CHOSEN_MASK: side(ranked["mask"], 0),
          schema.REJECTED_TOKENS: side(ranked["tokens"], 1),
          schema.REJECTED_MASK: side(ranked["mask"], 1),
          schema.GOLD_CHOSEN: side(ranked["gold"], 0).astype(np.float32),
          schema.GOLD_REJECTED: side(ranked["gold"], 1).astype(np.float32)}


def run(c, seed: int, workdir: str, bt_dir: str, metarm_config, train, eval_arrays) -> dict:
  """One seed's MetaRM part: per-pair correctness of BT (the model in ``bt_dir``) and
  MetaRM on the shifted test pairs and of MetaRM on ``eval_arrays``, the shift measures
  [prompts], and the cost. ``metarm_config(workdir, flags)`` builds the train-rm config
  (BT's, with ``flags`` on top); ``train(config)`` trains it."""
  start = time.time()
  task = synthetic.build_task(synthetic.SyntheticConfig(**c.task.to_dict()))
  proxy, _ = load_rm.load_ensemble(bt_dir)
  key = jax.random.fold_in(jax.random.key(seed), c.metarm.prompt_key)
  meta = ranked_samples(c, task, proxy, jax.random.fold_in(key, 0), c.metarm.train_prompts)
  meta_file = os.path.join(workdir, "meta_set.npz")
  np.savez(meta_file, tokens=meta["tokens"][:, :c.metarm.k], mask=meta["mask"][:, :c.metarm.k])
  test = ranked_samples(c, task, proxy, jax.random.fold_in(key, 1), c.metarm.test_prompts)
  pairs = shifted_pairs(test)
  sample_seconds = time.time() - start
  meta_dir = os.path.join(workdir, "metarm")
  start = time.time()
  train(metarm_config(meta_dir, {
      "metarm.enabled": True, "metarm.responses": meta_file, "metarm.k": c.metarm.k,
      "metarm.eta": c.metarm.eta, "metarm.first_order": c.metarm.first_order,
      "metarm.prompts_per_step": c.metarm.prompts_per_step}))
  train_seconds = time.time() - start
  metarm, _ = load_rm.load_ensemble(meta_dir)
  shift = {f"{name}_shift": score_shift(test[name], 2)
           for name in ("proxy", "gold", "length", "markers")}
  shift["meta_proxy_shift"] = score_shift(meta["proxy"], c.metarm.k)
  return {"bt_shifted": pair_correct(proxy, pairs), "metarm_shifted": pair_correct(metarm, pairs),
          "metarm_held_out": pair_correct(metarm, eval_arrays), **shift,
          "sample_seconds": sample_seconds, "train_seconds": train_seconds}


def summarise(c, per_seed: list[dict], bt_held_out: list, boot: dict) -> dict:
  """Intervals over seeds and shifted pairs (prompts for the shifts), the paired MetaRM − BT
  differences, and the precondition record."""
  rows = lambda name: [s[name] for s in per_seed]
  shift = {name: stats.hierarchical_bootstrap(rows(name), **boot)
           for name in ("proxy_shift", "gold_shift", "length_shift", "markers_shift",
                        "meta_proxy_shift")}
  ok = shift["proxy_shift"]["low"] > c.metarm.min_shift
  s = shift["proxy_shift"]
  precondition = stats.precondition(
      "policy_is_shifted", s, ok,
      f"proxy score of the shifted test responses (the proxy's top 2 of "
      f"{c.metarm.num_samples}) minus the base policy's, in base-policy sd: {s['mean']:.2f} "
      f"[{s['low']:.2f}, {s['high']:.2f}], needs low > {c.metarm.min_shift}; gold shift "
      f"{shift['gold_shift']['mean']:+.2f} sd")
  return {
      "shift": shift, "precondition": precondition,
      "shifted_pairs": [len(r) for r in rows("bt_shifted")],
      "shifted_accuracy": {"bt": stats.hierarchical_bootstrap(rows("bt_shifted"), **boot),
                           "metarm": stats.hierarchical_bootstrap(rows("metarm_shifted"),
                                                                  **boot)},
      "held_out_accuracy": {"bt": stats.hierarchical_bootstrap(bt_held_out, **boot),
                            "metarm": stats.hierarchical_bootstrap(rows("metarm_held_out"),
                                                                   **boot)},
      "metarm_minus_bt_shifted": stats.paired_difference(rows("metarm_shifted"),
                                                         rows("bt_shifted"), **boot),
      "metarm_minus_bt_held_out": stats.paired_difference(rows("metarm_held_out"), bt_held_out,
                                                          **boot),
      "cost": {"sample_seconds": float(np.mean(rows("sample_seconds"))),
               "train_seconds": float(np.mean(rows("train_seconds"))),
               "proxy_evaluations": (c.metarm.train_prompts + c.metarm.test_prompts)
               * c.metarm.num_samples}}
