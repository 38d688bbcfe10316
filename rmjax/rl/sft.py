"""Supervised fine-tuning (``rmjax sft``): a policy trained on prompt + response rows by the
next-token loss of the response tokens only, on the one training loop.

Rows (``data.source``):
  * "synthetic": the chosen response of every synthetic-task pair (its train and eval
    splits) after its prompt;
  * "files": {"prompt", "response"} rows (JSONL, JSON list, Parquet) or any preference
    format ``readers.read_pairs`` knows (its chosen response), split by line ranges and
    tokenised with a local tokenizer;
  * "best_of_n": rejection-sampling fine-tuning (RAFT, ReST): for each of ``prompts``
    synthetic-task prompts, ``n`` samples of the starting policy, the best by the reward
    (``reward``: a train-rm workdir, a dpo workdir (its implicit reward), or "gold" for
    the control) kept as the row.
Batches are a pure function of the step (``ArraySource``), the state is
``{"params", "opt_state", "step"}``, so a killed run resumes bit for bit. The evaluation
is the held-out response loss and, on the synthetic task, the gold reward and KL to the
starting policy of ``train.eval_prompts`` samples (``policy_eval``).
"""

from __future__ import annotations

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rmjax import parallel
from rmjax.data import readers, schema, tokenize
from rmjax.data.array_source import ArraySource, padded_batches
from rmjax.lm.step import make_train_step
from rmjax.models.sampler import SamplingConfig
from rmjax.objectives import language_model
from rmjax.parallel.sharding import to_host
from rmjax.rl import best_of_n, build, policy_eval
from rmjax.rl import rewards as rl_rewards
from rmjax.runtime import loop
from rmjax.runtime.checkpoint import Checkpointer, abstract_like, provenance
from rmjax.runtime.metrics import MetricsWriter, Progress
from rmjax.runtime.optim import make_optimizer
from rmjax.tasks import preference as synthetic

ROW_KEYS = ("tokens", "mask", "prompt_len")
SOURCES = ("synthetic", "files", "best_of_n")
SELECTION_STREAM = 2**32 - 4  # the key stream of best-of-n's samples


def _synthetic_rows(task_cfg) -> tuple[dict, dict]:
  """(train, eval) rows: each synthetic pair's prompt and chosen response."""
  def rows(split):
    arrays = synthetic.make_split(task_cfg, split)
    return {"tokens": arrays[schema.CHOSEN_TOKENS], "mask": arrays[schema.CHOSEN_MASK],
            "prompt_len": arrays["prompt_len"]}
  return rows("train"), rows("eval")


def _file_examples(path: str, format: str, skip_bad_rows: bool) -> list:
  """(prompt, response) of every row of ``path``, in file order."""
  records = list(readers.read_records(path))
  first = next((row for _, _, row in records if isinstance(row, dict)), None)
  if format == "sft" or (not format and first is not None and "response" in first):
    out = []
    for _, where, row in records:
      ok = isinstance(row, dict) and all(
          isinstance(row.get(f), (str, list)) and len(row.get(f)) for f in ("prompt", "response"))
      if not ok:
        if skip_bad_rows:
          continue
        raise schema.DataError(f"{where}: an sft row needs non-empty 'prompt' and 'response' "
                               f"(text or token ids) (data.files.paths has {path})")
      out.append((row["prompt"], row["response"]))
    return out
  pairs = readers.read_pairs(path, format or None, skip_bad_rows=skip_bad_rows).pairs
  return [(p.prompt, p.chosen) for p in pairs]


def _file_rows(f) -> tuple[dict, dict, int]:
  """(train, eval, vocabulary size) rows of ``data.files``: lines [start, stop), 1-based,
  counted over the files in order."""
  examples = []
  for path in f.paths:
    if not path or not os.path.isfile(path):
      raise FileNotFoundError(f"data.files.paths: no such file {path!r}")
    examples += _file_examples(path, str(f.format or ""), bool(f.skip_bad_rows))
  tokenizer = tokenize.load_tokenizer(f.tokenizer) if f.tokenizer else None

  def rows(lines):
    chosen = [e for i, e in enumerate(examples, 1) if lines[0] <= i < lines[1]]
    if not chosen:
      raise schema.DataError(f"data.files lines [{lines[0]}, {lines[1]}) hold no rows "
                             f"({len(examples)} in the files)")
    pairs = [schema.PreferencePair(p, r, r) for p, r in chosen]
    arrays = tokenize.tokenize_pairs(pairs, tokenizer, f.seq_len, f.max_response_len)
    return {"tokens": arrays[schema.CHOSEN_TOKENS], "mask": arrays[schema.CHOSEN_MASK],
            "prompt_len": arrays["prompt_len"]}

  vocab = len(tokenizer) if tokenizer is not None else 0
  return rows(tuple(f.train_lines)), rows(tuple(f.eval_lines)), vocab


def best_of_n_rows(task, policy, cfg, seed: int, mesh) -> dict:
  """Rejection sampling: for ``cfg.prompts`` prompts, the best of ``cfg.n`` samples of
  ``policy`` by ``cfg.reward`` ("gold", a train-rm workdir: its members' mean, or a dpo
  workdir: its implicit reward), as rows (right-padded, prompt first)."""
  if cfg.reward == "gold":
    score = lambda tokens, mask, plen: task.gold_reward(tokens, mask, plen)["total"]
  else:
    (source,) = build.load_reward_sources([cfg.reward], mesh)
    score = lambda tokens, mask, plen: jnp.mean(jnp.asarray(
        rl_rewards.member_scores([source], tokens, mask, plen)[0]), axis=-1)
  key = jax.random.fold_in(jax.random.key(seed), SELECTION_STREAM)
  prompts, prompt_len = task.sample_prompts(jax.random.fold_in(key, 0), cfg.prompts)
  mask = np.arange(prompts.shape[1])[None] < prompt_len[:, None]
  sampling = SamplingConfig(max_new_tokens=task.cfg.max_response_len, eos_id=synthetic.EOS,
                            pad_id=synthetic.PAD, temperature=cfg.temperature)
  out = best_of_n.best_of_n_scores(
      jax.random.fold_in(key, 1), policy, sampling, prompts, mask, cfg.n,
      lambda t, m, p: {"score": score(t, m, p), "tokens": t, "mask": m})
  best = np.argmax(out["score"], axis=1)
  rows = np.arange(cfg.prompts)
  return {"tokens": out["tokens"][rows, best].astype(np.int32),
          "mask": out["mask"][rows, best].astype(bool), "prompt_len": prompt_len.astype(np.int32)}


def rows_hash(*splits: dict) -> str:
  digest = hashlib.sha256()
  for arrays in splits:
    for key in ROW_KEYS:
      digest.update(np.ascontiguousarray(arrays[key]).tobytes())
  return digest.hexdigest()[:16]


def make_loss_fn(graphdef, prompt_weight: float = 0.0):
  """``loss_fn(params, batch, dropout_key) -> scalar``: the response tokens' mean NLL (the
  prompt's predictions weighted by ``prompt_weight``)."""

  def loss_fn(params, batch, dropout_key):
    model = nnx.merge(graphdef, params)
    hidden, _ = model(batch["tokens"], batch["mask"], dropout_key=dropout_key)
    return language_model.response_loss(model.logits(hidden), batch["tokens"], batch["mask"],
                                        batch["prompt_len"], prompt_weight)

  return loss_fn


class SFTTrainer:
  """The policy, rows and compiled functions of one run."""

  def __init__(self, config, mesh=None):
    d = config.data
    if d.source not in SOURCES:
      raise ValueError(f"data.source={d.source!r} is not one of {SOURCES}")
    self.config = config
    self.mesh = mesh or parallel.make_mesh(parallel.MeshConfig(**config.mesh))
    self.task = None
    if d.source != "files" or not config.policy.init_from:
      if d.source == "files":
        raise ValueError("data.source='files' needs policy.init_from (a Hugging Face folder "
                         "or a .gguf file whose tokenizer the files are tokenised with)")
      task_cfg = synthetic.from_fields(d.synthetic.to_dict())
      self.task = synthetic.build_task(task_cfg)
    policy = (build.policy_from(str(config.policy.init_from)) if config.policy.init_from
              else self.task.policy)
    if d.source == "synthetic":
      self.train_rows, self.eval_rows = _synthetic_rows(task_cfg)
    elif d.source == "best_of_n":
      self.train_rows = best_of_n_rows(self.task, policy, d.best_of_n, config.seed, self.mesh)
      self.eval_rows = _synthetic_rows(task_cfg)[1]
    else:
      self.train_rows, self.eval_rows, vocab = _file_rows(d.files)
      if vocab > policy.cfg.vocab_size:
        raise ValueError(f"data.files.tokenizer has {vocab} ids, more than the policy's "
                         f"vocabulary of {policy.cfg.vocab_size}")
    self.data_hash = rows_hash(self.train_rows, self.eval_rows)
    tc = config.train
    self.source = ArraySource(self.train_rows, tc.batch_size, seed=config.seed)
    self.graphdef, reference = nnx.split(policy)
    self.reference = parallel.shard_tree(reference, self.mesh)
    self.tx = make_optimizer(config.optim, tc.steps, None)
    self.loss_fn = make_loss_fn(self.graphdef, float(config.sft.prompt_loss_weight))
    self._eval_sums = jax.jit(self._response_sums)
    self.shardings = None
    self.gold = (policy_eval.GoldProbe(self.task, self.graphdef, self.reference, config.seed,
                                       tc.eval_prompts, self.mesh)
                 if self.task is not None and tc.eval_prompts else None)

  def init_state(self):
    state, self.shardings = build.policy_state(self.reference, self.tx, self.mesh)
    return state

  def _response_sums(self, params, batch):
    """(Σ NLL over the response tokens, their count) of a batch."""
    model = nnx.merge(self.graphdef, params)
    hidden, _ = model(batch["tokens"], batch["mask"])
    m = language_model.response_prediction_mask(batch["mask"], batch["prompt_len"])
    nll = language_model.next_token_nll(model.logits(hidden), batch["tokens"])
    return jnp.sum(jnp.where(m, nll, 0.0)), jnp.sum(m)

  def step_fn(self):
    step = make_train_step(self.graphdef, self.tx, self.config.seed, loss_fn=self.loss_fn)
    return parallel.compile_step(step, self.mesh, self.shardings,
                                 {k: v.ndim for k, v in self.source.batch(0).items()})

  def evaluate(self, state) -> dict:
    """Held-out response loss (mean over every response token of the eval rows); on the
    synthetic task, gold and KL of policy samples beside the starting policy's gold."""
    total = tokens = 0.0
    for batch, real in padded_batches(self.eval_rows, self.config.train.batch_size):
      batch = dict(batch, mask=batch["mask"] & (np.arange(len(batch["mask"])) < real)[:, None])
      nll, count = to_host(self._eval_sums(state["params"],
                                           parallel.shard_batch(batch, self.mesh)))
      total, tokens = total + float(nll), tokens + float(count)
    out = {"response_loss": total / max(tokens, 1.0)}
    if self.gold is not None:
      out.update(self.gold(state["params"]))
    return out


def train(config) -> dict:
  """SFT per ``config`` (``rmjax/configs/sft.py``) on ``loop.run``; returns the last
  evaluation, the last step's metrics and the workdir."""
  tc = config.train
  trainer = SFTTrainer(config)
  state = trainer.init_state()
  checkpoints = tc.get("checkpoint_dir") or os.path.join(tc.workdir, "checkpoints")
  checkpointer = Checkpointer(checkpoints, keep=tc.keep_checkpoints, interval=tc.save_every,
                              provenance=provenance(config, trainer.data_hash))
  result = loop.run(
      state=state, step_fn=trainer.step_fn(), steps=tc.steps,
      batches=lambda step: parallel.shard_batch(trainer.source.batch(step), trainer.mesh),
      checkpointer=checkpointer, writer=MetricsWriter(tc.workdir),
      progress=Progress(0, tc.steps), log_every=tc.log_every, eval_every=tc.eval_every,
      evaluate=trainer.evaluate, restore_target=abstract_like(state, trainer.shardings),
      progress_keys=("loss",),
      on_resume=lambda step: print(f"resumed from step {step} in {tc.workdir}"))
  return {"eval": result.eval, "metrics": result.metrics, "workdir": tc.workdir}
