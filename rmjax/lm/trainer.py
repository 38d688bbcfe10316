"""Pretraining a small causal language model on task text, for ``model.init_from``.

Eisenstein et al. ("Helping or Herding?") call a reward-model ensemble pretrain-diverse
when each member's backbone was first trained as a language model with its own seed;
``pretrain`` is that first stage. The seed sets the initialisation and the data order
(a seeded permutation of the rows per epoch, ``rmjax.data.array_source.ArraySource``).
The run is an ordinary ``rmjax.runtime.loop.run``: checkpoints in ``<workdir>/checkpoints``
(a killed run resumes where it stopped), metrics in ``<workdir>/metrics.jsonl`` and
TensorBoard, the finiteness check. At the end the model is written as a Hugging Face
folder ``<workdir>/hf`` (config.json, model.safetensors and ``pretrain.json``, the run's
settings and final train loss), written beside it and renamed into place, so the folder
exists only once it is complete; a rerun then returns it without training.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from rmjax import parallel
from rmjax.data.array_source import ArraySource
from rmjax.lm import step as lm_step
from rmjax.models import hf_io
from rmjax.models.config import ModelConfig
from rmjax.models.transformer import Transformer
from rmjax.objectives import language_model
from rmjax.parallel.distributed import is_primary
from rmjax.runtime import loop
from rmjax.runtime.checkpoint import Checkpointer, abstract_like, provenance
from rmjax.runtime.metrics import MetricsWriter, Progress, read_metrics
from rmjax.runtime.optim import make_optimizer
from rmjax.runtime.run_identity import run_differences

HF_DIR = "hf"  # <workdir>/hf: the pretrained model, for model.init_from
SUMMARY = "pretrain.json"  # in that folder: {"config", "data_hash", "final_train_loss"}
# AdamW settings not exposed as arguments (those of train-rm's defaults).
_OPTIM_FIXED = dict(b1=0.9, b2=0.99, clip_norm=1.0, grad_accum=1)


def check_data(tokens, mask, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """``tokens`` int [N, S] and ``mask`` bool [N, S] (True on real tokens) as numpy arrays,
  or a one-line ValueError naming what is wrong."""
  tokens, mask = np.asarray(tokens), np.asarray(mask)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [rows, seq], got shape {tokens.shape}")
  if mask.shape != tokens.shape:
    raise ValueError(f"mask shape {mask.shape} does not match tokens shape {tokens.shape}")
  if tokens.shape[0] == 0:
    raise ValueError("tokens has no rows: nothing to train or evaluate on")
  if tokens.shape[1] < 2:
    raise ValueError(f"tokens has sequences of length {tokens.shape[1]}; a next token needs "
                     "at least 2")
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"tokens must be integer token ids, got dtype {tokens.dtype}")
  if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
    raise ValueError(f"mask must be bool (or 0/1), got dtype {mask.dtype} with other values")
  mask = mask.astype(bool)
  real = tokens[mask]
  if real.size and (real.min() < 0 or real.max() >= vocab_size):
    raise ValueError(f"tokens hold ids in [{real.min()}, {real.max()}], outside the model's "
                     f"vocabulary [0, {vocab_size})")
  if not (mask[:, 1:] & mask[:, :-1]).any():
    raise ValueError("mask has no two consecutive real tokens: there is no next token to "
                     "predict")
  return tokens.astype(np.int32), mask


def data_hash(tokens: np.ndarray, mask: np.ndarray) -> str:
  """SHA-256 of the token rows and their mask (shapes included)."""
  h = hashlib.sha256()
  for array in (tokens, mask):
    h.update(str(array.shape).encode())
    h.update(np.ascontiguousarray(array).tobytes())
  return h.hexdigest()


def lm_config(model_config: ModelConfig) -> ModelConfig:
  """The architecture pretrained: ``model_config`` as a causal LM without other heads."""
  if model_config.lora_rank:
    raise ValueError(f"model_config.lora_rank={model_config.lora_rank}: pretraining trains "
                     "the whole backbone, set lora_rank=0")
  return model_config.replace(lm_head=True, num_reward_heads=0, value_head=False)


def _run_config(mcfg: ModelConfig, seed: int, steps: int, batch_size: int, optim) -> dict:
  """What the run computes, as JSON: compared on resume and on a rerun of a finished run."""
  return json.loads(json.dumps({
      "model": dataclasses.asdict(mcfg), "seed": seed,
      "train": {"steps": steps, "batch_size": batch_size}, "optim": optim.to_dict()}))


def read_summary(folder) -> dict:
  """``pretrain.json`` of a pretrained folder: "config" (the run's settings),
  "data_hash", "final_train_loss" (mean over the last logging window)."""
  return json.loads((pathlib.Path(folder) / SUMMARY).read_text())


def _finished(hf: pathlib.Path, run_config: dict, digest: str) -> bool:
  """True if ``hf`` holds this run, finished; a finished other run is a ValueError."""
  if not (hf / SUMMARY).is_file():
    return False
  stored = read_summary(hf)
  now = {"config": run_config, "data_hash": digest}
  differences = run_differences(stored, now)
  old_steps, new_steps = stored["config"]["train"]["steps"], run_config["train"]["steps"]
  if old_steps != new_steps:  # harmless when resuming a checkpoint, not for a finished run
    differences.append(f"train.steps: {old_steps} -> {new_steps}")
  if differences:
    raise ValueError(f"{hf} holds a finished pretraining run with other settings: "
                     f"{'; '.join(differences)} (stored -> now); use a new workdir")
  return True


def _last_train_loss(writer: MetricsWriter) -> float | None:
  rows = [r for r in read_metrics(writer.jsonl_path) if r.get("split") == "train"]
  return rows[-1]["loss"] if rows else None


def pretrain(tokens, mask, model_config: ModelConfig, *, workdir, seed: int = 0,
             steps: int = 1000, batch_size: int = 32, learning_rate: float = 1e-3,
             warmup_steps: int = 50, weight_decay: float = 0.01, log_every: int = 25,
             save_every: int = 200, mesh=None) -> pathlib.Path:
  """Train a fresh ``Transformer(lm_config(model_config))`` from ``seed`` on next-token
  prediction over ``tokens`` int [N, S] / ``mask`` bool [N, S] (right-padded rows); returns
  ``<workdir>/hf``, a Hugging Face folder ``model.init_from`` reads.

  ``steps`` AdamW updates of ``batch_size`` rows (linear warmup over ``warmup_steps``,
  then cosine decay: ``rmjax.runtime.optim``). ``mesh``: default every device along the
  data axis (``batch_size`` must divide over it). A run whose workdir holds a checkpoint
  resumes from it (the same settings and data, or a one-line ValueError); one whose
  ``<workdir>/hf`` is already written returns it without training. The final train loss
  is printed and stored in the folder (``read_summary``).
  """
  for name, value in (("steps", steps), ("batch_size", batch_size), ("log_every", log_every),
                      ("save_every", save_every)):
    if value < 1:
      raise ValueError(f"{name}={value} must be >= 1")
  mcfg = lm_config(model_config)
  tokens, mask = check_data(tokens, mask, mcfg.vocab_size)
  optim = ml_collections.ConfigDict(dict(
      learning_rate=learning_rate, warmup_steps=warmup_steps, weight_decay=weight_decay,
      **_OPTIM_FIXED))
  run_config = _run_config(mcfg, seed, steps, batch_size, optim)
  digest = data_hash(tokens, mask)
  workdir = pathlib.Path(workdir)
  hf = workdir / HF_DIR
  if _finished(hf, run_config, digest):
    return hf

  mesh = parallel.make_mesh(parallel.MeshConfig()) if mesh is None else mesh
  data_parallel = parallel.sharding.data_parallel_size(mesh)
  if batch_size % data_parallel:
    raise ValueError(f"batch_size={batch_size} is not divisible by the data-parallel size "
                     f"{data_parallel} of mesh {dict(mesh.shape)}")
  graphdef, shardings, init, train_step = _program(
      mcfg, tuple(sorted(optim.items())), steps,
      seed if mcfg.dropout_rate > 0 else None, mesh)
  state = init(jax.random.key(seed))
  source = ArraySource({lm_step.TOKENS: tokens, lm_step.MASK: mask}, batch_size, seed=seed)
  checkpointer = Checkpointer(workdir / "checkpoints", keep=1, interval=save_every,
                              provenance=provenance(run_config, digest))
  writer = MetricsWriter(str(workdir))
  result = loop.run(
      state=state, step_fn=train_step, steps=steps,
      batches=lambda i: parallel.shard_batch(source.batch(i), mesh),
      checkpointer=checkpointer, writer=writer, progress=Progress(0, steps),
      log_every=log_every, restore_target=abstract_like(state, shardings),
      progress_keys=("loss",),
      on_resume=lambda i: print(f"resumed pretraining from step {i} in {workdir}"))
  final_loss = result.metrics.get("loss")
  if final_loss is None and writer.enabled:  # resumed at the end: nothing trained now
    final_loss = _last_train_loss(writer)
  trained = nnx.merge(graphdef, parallel.sharding.to_host(result.state["params"]))
  if is_primary():
    _write_folder(trained, hf, {"config": run_config, "data_hash": digest,
                                "final_train_loss": final_loss})
    print(f"pretrained {steps} steps from seed {seed}: final train loss {final_loss}; "
          f"wrote {hf}")
  return hf


@functools.lru_cache(maxsize=4)
def _program(mcfg: ModelConfig, optim_items: tuple, steps: int, dropout_seed: int | None,
             mesh):
  """(graphdef, state shardings, ``init(key) -> state``, train step), both jitted.

  Cached on the architecture, optimiser and mesh, with the seed a traced key (the step
  bakes in a seed only for dropout), so that pretraining several seeds in one process
  (the members of a pretrain-diverse ensemble) compiles once. ``init(key(seed))`` builds
  the parameters of ``Transformer(mcfg, rngs=nnx.Rngs(seed))`` directly in their shards.
  """
  tx = make_optimizer(ml_collections.ConfigDict(dict(optim_items)), steps)
  make = lambda key: Transformer(mcfg, rngs=nnx.Rngs(key))

  def init(key):
    params = nnx.split(make(key))[1]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  graphdef, _ = nnx.split(nnx.eval_shape(lambda: make(jax.random.key(0))))
  shardings = parallel.tree_shardings(jax.eval_shape(init, jax.random.key(0)), mesh)
  train_step = parallel.compile_step(
      lm_step.make_train_step(graphdef, tx, dropout_seed or 0, dropout=dropout_seed is not None),
      mesh, shardings, {lm_step.TOKENS: 2, lm_step.MASK: 2})
  return graphdef, shardings, jax.jit(init, out_shardings=shardings), train_step


@functools.lru_cache(maxsize=4)
def _sums(graphdef):
  """Jitted (params, tokens, mask) -> (Σ nll, count) of a model structure, compiled once."""

  @jax.jit
  def sums(params, tokens, mask):
    logits = lm_step.model_logits(nnx.merge(graphdef, params), tokens, mask)
    return language_model.next_token_sums(logits, tokens, mask)

  return sums


def _write_folder(model: Transformer, hf: pathlib.Path, summary: dict) -> None:
  """``save_hf`` plus ``pretrain.json`` into ``<hf>.tmp``, then renamed to ``hf``."""
  tmp = hf.with_name(hf.name + ".tmp")
  if tmp.exists():  # left by a run killed while writing
    shutil.rmtree(tmp)
  hf_io.save_hf(model, tmp)
  (tmp / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
  os.replace(tmp, hf)


def evaluate_loss(model_or_folder, tokens, mask, *, batch_size: int = 64) -> float:
  """Mean next-token loss (nats per counted prediction) of a ``Transformer`` with an LM
  head, or of the Hugging Face folder ``pretrain`` wrote, on ``tokens``/``mask`` [N, S]."""
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  model = (model_or_folder if isinstance(model_or_folder, Transformer)
           else hf_io.load_hf(model_or_folder))
  tokens, mask = check_data(tokens, mask, model.cfg.vocab_size)
  graphdef, params = nnx.split(model)
  sums = _sums(graphdef)
  total, count = 0.0, 0
  for start in range(0, len(tokens), batch_size):
    s, c = sums(params, tokens[start:start + batch_size], mask[start:start + batch_size])
    total, count = total + float(s), count + int(c)
  return total / count
