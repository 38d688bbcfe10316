"""Proxy reward-model ensembles for the overoptimisation experiments, diversified as the
papers do.

Every member is a ``train-rm`` run of one reward model (``ensemble.k = 1``) on the
synthetic task's labelled pairs, with its own seed (head initialisation and data order,
Coste et al. 2023). Where the members' backbones come from is the ensemble's kind
(Eisenstein et al. 2023, "Helping or Herding?"):

- ``pretrain``: pretrain-diverse. Member m's backbone is first trained as a causal LM
  (``rmjax.lm.pretrain``) on base-policy text with its own seed, then fine-tuned as a
  reward model.
- ``finetune``: finetune-diverse. Every member starts from one shared pretrained backbone
  (member 0's of the pretrain-diverse ensemble, so the two kinds differ only in where the
  other members' backbones come from) and differs in head, seed and data order.
- ``random``: no pretraining; each member's backbone is randomly initialised from its seed.

Runs live under ``<workdir>/proxies`` and are reused when their config is unchanged (a
backbone by its own completion record, a member by its final checkpoint), so methods and
scripts share them instead of retraining.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rmjax.configs import train_rm
from rmjax.lm import trainer as lm_trainer
from rmjax.models.config import ModelConfig
from rmjax.rm import load as load_rm
from rmjax.rm import trainer as rm_trainer
from rmjax.tasks import preference as synthetic

KINDS = ("pretrain", "finetune", "random")
PRETRAIN_KEY = 2000  # folded into the task seed's key for the pretraining text: no split's


def model_config(c, vocab_size: int, seq_len: int) -> ModelConfig:
  """One member's architecture, from ``c.proxy.model`` (llama-style, no heads of its own:
  the LM and the reward model add theirs)."""
  return ModelConfig(vocab_size=vocab_size, max_seq_len=seq_len, **c.proxy.model.to_dict())


def pretraining_text(c, task) -> tuple[np.ndarray, np.ndarray]:
  """Base-policy prompts and responses, tokens/mask [c.proxy.pretrain.sequences, S]: the
  task text every backbone is pretrained on (one corpus; members differ by seed)."""
  keys = jax.random.split(jax.random.fold_in(jax.random.key(c.task.seed), PRETRAIN_KEY))
  prompts, plen = task.sample_prompts(keys[0], int(c.proxy.pretrain.sequences))
  return task.sample_responses(keys[1], prompts, plen)


def backbones(c, task, seed: int) -> list[pathlib.Path]:
  """The K pretrained backbones of ``seed`` (Hugging Face folders), trained or reused."""
  tokens, mask = pretraining_text(c, task)
  mcfg = model_config(c, task.cfg.vocab_size, task.cfg.seq_len)
  p = c.proxy.pretrain
  return [lm_trainer.pretrain(
      tokens, mask, mcfg, workdir=os.path.join(c.workdir, "proxies", f"lm_seed{seed}_m{m}"),
      seed=member_seed(seed, m), steps=p.steps, batch_size=p.batch_size,
      learning_rate=p.learning_rate, warmup_steps=p.warmup_steps, log_every=p.steps,
      save_every=p.steps) for m in range(c.proxy.k)]


def member_seed(seed: int, m: int) -> int:
  """Member m's seed in experiment seed ``seed`` (distinct for every pair)."""
  return 1000 * seed + m


def member_config(c, noise: float, seed: int, m: int, workdir: str,
                  init_from: str) -> ml_collections.ConfigDict:
  """The ``train-rm`` config of member m: train_rm's defaults, ``c.proxy``'s model, optim
  and train fields, the task with ``noise`` label noise, one model."""
  t = train_rm.get_config()
  for name, value in c.proxy.model.items():
    t.model[name] = value
  t.model.init_from = init_from
  for section in ("optim", "train"):
    for name, value in c.proxy[section].items():
      t[section][name] = value
  t.data.synthetic = ml_collections.ConfigDict({**c.task.to_dict(), "label_noise": noise})
  t.seed = member_seed(seed, m)
  steps = t.train.steps
  t.train.update(workdir=workdir, eval_every=steps, save_every=steps,
                 log_every=max(1, steps // 4))
  return t


def _trained(workdir: str, config) -> dict | None:
  """The stored final eval metrics of a finished run of exactly ``config``, else None."""
  path = os.path.join(workdir, "proxy_done.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    done = json.load(f)
  return done["eval"] if done["config"] == config.to_dict() else None


def train_member(config) -> dict:
  """Final eval metrics of one member, trained now or reused (a run of another config in
  its workdir is discarded, never resumed)."""
  workdir = config.train.workdir
  if (metrics := _trained(workdir, config)) is not None:
    return metrics
  shutil.rmtree(workdir, ignore_errors=True)
  metrics = {k: float(v) for k, v in rm_trainer.train(config)["eval"].items()}
  with open(os.path.join(workdir, "proxy_done.json"), "w") as f:
    json.dump({"config": config.to_dict(), "eval": metrics}, f)
  return metrics


def member_workdir(c, kind: str, noise: float, seed: int, m: int) -> str:
  """Where member m of the ``kind`` ensemble of ``seed`` at label noise ``noise`` lives."""
  return os.path.join(c.workdir, "proxies", f"{kind}_noise{noise:g}_seed{seed}_m{m}")


def train_ensemble(c, task, noise: float, seed: int, kind: str):
  """(scorer (tokens, mask) -> [B, K], per-member eval metrics) of the ``kind`` ensemble
  of ``seed`` at label noise ``noise``."""
  if kind not in KINDS:
    raise ValueError(f"proxy kind={kind!r} is not one of {KINDS}")
  k = int(c.proxy.k)
  inits = [""] * k
  if kind != "random":
    folders = backbones(c, task, seed)
    inits = [str(folders[m] if kind == "pretrain" else folders[0]) for m in range(k)]
  scorers, evals = [], []
  for m in range(k):
    workdir = member_workdir(c, kind, noise, seed, m)
    evals.append(train_member(member_config(c, noise, seed, m, workdir, inits[m])))
    scorers.append(load_rm.load_ensemble(workdir)[0])

  @jax.jit
  def scorer(tokens, mask):
    return jnp.concatenate([s(tokens, mask) for s in scorers], axis=-1)

  return scorer, evals


def train_proxies(c, noise: float, seed: int):
  """(scorer [B, K], mean eval metrics over members) of the ``c.proxy.kind`` ensemble."""
  task = synthetic.build_task(synthetic.SyntheticConfig(**c.task.to_dict()))
  scorer, evals = train_ensemble(c, task, noise, seed, c.proxy.kind)
  return scorer, {key: float(np.mean([e[key] for e in evals])) for key in evals[0]}
