"""Builds what PPO trains and scores with: the rollout task (policy and prompts), the reward
sources, the critic.

A ``RolloutTask`` is what a rollout needs from the world: the policy to start from, a
prompt sampler, the token ids that end and pad a response, and, optionally, an evaluation
hook (the synthetic task's gold reward) whose terms are logged but never optimised.
``rollout_task`` builds it from the ``policy`` and ``prompts`` sections of a ``ppo``
config: the synthetic task of the reward models by default, or a policy from a Hugging
Face folder, a GGUF file or an ``rmjax rl`` checkpoint with prompts from a file.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from rmjax import parallel
from rmjax.data import readers, tokenize
from rmjax.data.schema import DataError
from rmjax.models import gguf_io, hf_io, lora
from rmjax.models.transformer import Transformer
from rmjax.parallel.sharding import to_host
from rmjax.rl import implicit_reward, rule_rewards
from rmjax.rm import load as load_rm
from rmjax.rm import reward_source
from rmjax.runtime.checkpoint import abstract_like
from rmjax.tasks import preference as synthetic

CRITIC_INITS = ("reward_model", "policy")


@dataclasses.dataclass
class RolloutTask:
  """The policy and prompts a PPO run samples from.

  ``sample_prompts(key, n)`` -> (tokens [n, prompt_width] int32, real tokens first and
  right-padded with ``pad_id``; lengths [n] int32), a function of the key alone.
  ``evaluate(tokens, mask, prompt_len)`` (optional) -> {"total": [B], other terms: [B]}
  of right-padded episodes, logged as "gold" and "gold_<term>". ``confidence(tokens,
  mask, prompt_len)`` (optional) -> [B] the confidence in [0, 1] each response states (what
  PPO-C calibrates), judged against gold "total" > ``quality_threshold``. ``tokenizer`` and
  ``task`` identify the token ids and the world (``reward_source``): every reward source
  must match them.
  """

  policy: Transformer
  sample_prompts: Callable
  prompt_width: int
  max_response_len: int
  eos_id: int | None
  pad_id: int = 0
  evaluate: Callable | None = None
  confidence: Callable | None = None
  quality_threshold: float | None = None
  tokenizer: str = ""
  task: str = ""
  name: str = "the policy"

  def check_fits(self, new_tokens: int, field: str) -> None:
    """A one-line error naming ``field`` when a prompt plus ``new_tokens`` sampled tokens
    exceed the policy's ``max_seq_len``."""
    limit = self.policy.cfg.max_seq_len
    if self.prompt_width + new_tokens > limit:
      raise ValueError(f"prompts of {self.prompt_width} tokens plus {field}={new_tokens} "
                       f"exceed the policy's max_seq_len {limit}")


def synthetic_rollout_task(task: synthetic.SyntheticTask, gold: bool = True) -> RolloutTask:
  """The synthetic task's base policy and prompts; its gold reward as the evaluation hook,
  and the confidence its responses state."""
  cfg = task.cfg
  return RolloutTask(
      policy=task.policy, sample_prompts=task.sample_prompts, prompt_width=cfg.max_prompt_len,
      max_response_len=cfg.max_response_len, eos_id=synthetic.EOS, pad_id=synthetic.PAD,
      evaluate=task.gold_reward if gold else None,
      confidence=synthetic.stated_confidence, quality_threshold=task.quality_threshold,
      task=reward_source.task_id({"data": {"source": "synthetic",
                                           "synthetic": dataclasses.asdict(cfg)}}),
      name="the synthetic task")


def as_rollout_task(task, gold: bool = True) -> RolloutTask:
  """A ``RolloutTask`` as is, a ``SyntheticTask`` as ``synthetic_rollout_task``, or any
  object with ``policy``, ``sample_prompts``, ``cfg.max_prompt_len`` and
  ``cfg.max_response_len`` (and optionally ``gold_reward``) read the same way."""
  if isinstance(task, RolloutTask):
    return task
  if isinstance(task, synthetic.SyntheticTask):
    return synthetic_rollout_task(task, gold)
  evaluate = getattr(task, "gold_reward", None) if gold else None
  return RolloutTask(policy=task.policy, sample_prompts=task.sample_prompts,
                     prompt_width=task.cfg.max_prompt_len,
                     max_response_len=task.cfg.max_response_len, eos_id=synthetic.EOS,
                     pad_id=synthetic.PAD, evaluate=evaluate)


# --- reward sources -----------------------------------------------------------------------

def load_reward_sources(workdirs, mesh) -> list:
  """The reward source of every ``reward.workdirs`` entry, in order: a ``train-rm`` run's
  reward model or ensemble, or an ``rmjax dpo`` run's implicit reward."""
  if not workdirs:
    raise ValueError("reward.workdirs is empty; train a reward model with rmjax train-rm")
  return [dpo_source(w, mesh) if run_program(read_run_config(w)) == "dpo"
          else reward_source.from_workdir(w, mesh) for w in workdirs]


def dpo_source(workdir, mesh=None) -> implicit_reward.ImplicitRewardSource:
  """The implicit reward of an ``rmjax dpo`` run's latest policy against the policy it
  started from, under the run's loss and β; both models' parameters on ``mesh`` (by their
  logical axes) when given, so that it scores batches sharded over that mesh."""
  run = read_run_config(workdir)
  policy, reference = trained_policy(workdir), starting_policy(run)
  if mesh is not None:
    policy, reference = parallel.shard_model(policy, mesh), parallel.shard_model(reference, mesh)
  source = implicit_reward.ImplicitRewardSource(
      policy, reference, run.dpo, str(workdir),
      tokenizer=reward_source.tokenizer_id(reward_source.run_tokenizer(run)),
      task=reward_source.task_id(run))
  source.run_config = run  # its data name the task whose prompts and policy belong to it
  return source


def as_source(fn, vocab_size: int, index: int = 0):
  """A reward source as is; a ``members.RewardEnsemble`` or any ``(tokens, mask) -> [B, K]``
  function wrapped as a ``FunctionSource`` (K read from ``k`` or from one call)."""
  if isinstance(fn, reward_source.RewardSource):
    return fn
  k = getattr(fn, "k", None)
  if k is None:
    probe = fn(jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool))
    k = 1 if probe.ndim == 1 else int(probe.shape[-1])
  return reward_source.FunctionSource(fn, vocab_size, int(k), name=f"reward source {index}")


def first_member(scorer) -> Transformer:
  """The reward model behind a scorer (a ``WorkdirSource`` or ``RewardEnsemble``); member 0
  of separate ensemble members."""
  scorer = getattr(scorer, "ensemble", scorer)
  if not scorer.layout.stacked:
    return nnx.merge(scorer.graphdef, scorer.params)
  pure = jax.tree.map(lambda x: x[0], nnx.to_pure_dict(scorer.params))
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(scorer.cfg, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def critic_from(model: Transformer, mesh):
  """(graphdef, params) of a critic: ``model``'s backbone plus a value head, initialised
  from its first reward head when it has one (a reward model), else zeros."""
  cfg = model.cfg.replace(value_head=True)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  pure = nnx.to_pure_dict(nnx.state(model))
  head = pure.get("reward_head")
  pure["value_head"] = (to_host(head)[:, 0] if head is not None
                        else np.zeros(cfg.d_model, np.float32))
  nnx.replace_by_pure_dict(abstract, pure)
  # Own buffers: the update donates the critic, and the reward model must live on.
  return graphdef, jax.tree.map(jnp.copy, parallel.shard_tree(abstract, mesh))


# --- the policy ---------------------------------------------------------------------------

def _synthetic_config(run_config, where: str) -> synthetic.SyntheticConfig:
  data = run_config.get("data") or {}
  if data.get("source") != "synthetic":
    raise ValueError(f"policy.init_from is empty, so the policy is the synthetic task's, but "
                     f"the reward model {where} was trained on data.source="
                     f"{data.get('source')!r}: set policy.init_from and prompts.path")
  return synthetic.from_fields(data["synthetic"])


def read_run_config(workdir) -> ml_collections.ConfigDict:
  """The run config stored with a run's latest checkpoint."""
  return ml_collections.ConfigDict(load_rm.read_provenance(workdir)[1].get("config") or {})


POLICY_PROGRAMS = ("rl", "dpo", "sft")  # runs whose checkpoints hold a trained policy


def run_program(run) -> str:
  """Which policy program wrote a run config: "rl", "dpo" or "sft" ("" for none, e.g. a
  train-rm run)."""
  return next((name for name in POLICY_PROGRAMS if name in run), "")


def starting_policy(run) -> Transformer:
  """The policy a run of ``run_program(run)`` started from (the architecture its
  checkpoints hold, and its reference): its ``policy.init_from``, or the synthetic task's
  base policy (an rl run: of its reward models' task; dpo and sft: of their data's)."""
  if run_program(run) == "rl" or (run.get("policy") or {}).get("init_from"):
    return policy_model(run, [])
  return synthetic.build_task(synthetic.from_fields(run.data.synthetic.to_dict())).policy


def trained_policy(workdir, step: int | None = None) -> Transformer:
  """The policy of an ``rmjax rl``, ``dpo`` or ``sft`` run's checkpoint ``step`` (None: the
  latest): rl's actor with its LoRA adapters as trained (``lora.merged`` folds them in),
  dpo's and sft's params; its architecture is the run's own starting policy, so a run
  whose policy came from a file rebuilds the same model."""
  run = read_run_config(workdir)
  program = run_program(run)
  if not program:
    raise ValueError(f"policy.init_from={workdir}: not an rmjax rl, dpo or sft run (a "
                     "train-rm run's reward model has no LM head to sample from)")
  cfg = starting_policy(run).cfg
  key = "actor" if program == "rl" else "params"
  if program == "rl":
    cfg = cfg.replace(**lora.config_fields(run.get("actor")))
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  target = {key: abstract_like(abstract, parallel.tree_shardings(
      abstract, load_rm.single_device_mesh()))}
  with load_rm.opened_step(workdir, step) as (manager, step):
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)))
  return nnx.merge(graphdef, restored.state[key])


def policy_model(config, sources) -> Transformer:
  """The policy ``config.policy.init_from`` names: "" = the synthetic task of the first
  reward source (or of the first of the run's ``reward.workdirs``), a ``.gguf`` file, a
  Hugging Face folder (config.json) or an ``rmjax rl`` workdir (its actor)."""
  init_from = str((config.get("policy") or {}).get("init_from", "") or "")
  if not init_from:
    if sources and hasattr(sources[0], "run_config"):
      run, where = sources[0].run_config, sources[0].name
    else:
      where = config.reward.workdirs[0]
      run = read_run_config(where)
    return synthetic.build_task(_synthetic_config(run, where)).policy
  return policy_from(init_from)


def policy_from(init_from: str) -> Transformer:
  """The causal LM of a ``.gguf`` file, a Hugging Face folder (config.json) or an
  ``rmjax rl``, ``dpo`` or ``sft`` workdir (its trained policy, LoRA folded in)."""
  path = pathlib.Path(init_from)
  if init_from.endswith(".gguf"):
    if not path.is_file():
      raise FileNotFoundError(f"policy.init_from={init_from}: no such GGUF file")
    return gguf_io.load_gguf(path, lm_head=True)[0]
  if (path / "config.json").is_file():
    return hf_io.load_hf(path, lm_head=True)
  if path.is_dir():
    return lora.merged(trained_policy(path))
  raise FileNotFoundError(f"policy.init_from={init_from}: not a .gguf file, a Hugging Face "
                          "folder (config.json) or an rmjax rl, dpo or sft workdir")


def policy_state(reference, tx, mesh):
  """(state, its shardings) of a policy trained from ``reference`` by ``tx``: {"params":
  a copy with its own buffers (the step donates them; the reference lives on),
  "opt_state", "step"}, on ``mesh``. What ``rmjax sft`` and ``rmjax dpo`` train."""
  params = jax.tree.map(jnp.copy, reference)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  shardings = parallel.tree_shardings(state, mesh)
  return jax.device_put(state, shardings), shardings


# --- prompts from a file ------------------------------------------------------------------

def _prompt_rows(path: str, format: str, skip_bad_rows: bool) -> list:
  """Every prompt of ``path`` (text or token ids), in file order: the "prompt" field of a
  prompts file (JSONL, JSON list or Parquet rows {"prompt": ...}), or the prompts of any
  preference format ``readers.read_pairs`` knows (repeated prompts kept once)."""
  if not format or format == "prompts":
    records = list(readers.read_records(path))
    first = next((row for _, _, row in records if isinstance(row, dict)), None)
    if format == "prompts" or (first is not None and "prompt" in first
                               and "chosen" not in first):
      prompts = []
      for _, where, row in records:
        value = row.get("prompt") if isinstance(row, dict) else None
        ok = (isinstance(value, str) and value.strip()) or (
            isinstance(value, list) and value and all(isinstance(t, int) for t in value))
        if not ok:
          if skip_bad_rows:
            continue
          raise DataError(f"{where}: field 'prompt' must be non-empty text or a list of "
                          f"token ids (prompts.path={path})")
        prompts.append(value)
      return prompts
  pairs = readers.read_pairs(path, format or None, skip_bad_rows=skip_bad_rows).pairs
  seen, prompts = set(), []
  for pair in pairs:
    key = pair.prompt if isinstance(pair.prompt, str) else tuple(pair.prompt)
    if key not in seen:
      seen.add(key)
      prompts.append(pair.prompt)
  return prompts


def encode_prompts(prompts: list, tokenizer, max_len: int, pad_id: int = 0):
  """(tokens [P, W] int32 right-padded with ``pad_id``, lengths [P] int32): text through
  ``tokenizer`` (its special prefix, e.g. BOS, first), token ids as given; a prompt longer
  than ``max_len`` keeps its prefix and its last tokens (the end is what a response
  continues). W is the longest kept prompt."""
  prefix = tokenize.special_prefix(tokenizer) if tokenizer is not None else []
  texts = [p for p in prompts if isinstance(p, str)]
  if texts and tokenizer is None:
    raise ValueError("prompts.path holds text prompts but there is no tokenizer: set "
                     "prompts.tokenizer (or use a policy or reward model that has one)")
  encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
  rows = []
  for p in prompts:
    if isinstance(p, str):
      ids, keep = prefix + list(next(encoded)), len(prefix)
    else:
      ids, keep = list(p), 0
    if len(ids) > max_len:
      ids = ids[:keep] + ids[len(ids) - (max_len - keep):]
    rows.append(ids)
  width = max(len(r) for r in rows)
  tokens = np.full((len(rows), width), pad_id, np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  return tokens, np.asarray([len(r) for r in rows], np.int32)


def file_prompt_sampler(tokens: np.ndarray, lengths: np.ndarray) -> Callable:
  """``sample_prompts(key, n)``: n prompts drawn uniformly with replacement by ``key``."""
  def sample(key, n: int):
    rows = np.asarray(jax.random.randint(key, (n,), 0, len(tokens)))
    return tokens[rows], lengths[rows]
  return sample


def _tokenizer_spec(config, sources) -> str:
  """prompts.tokenizer, else the policy's own (a GGUF file, or an HF folder with tokenizer
  files), else the first reward model's."""
  spec = str(config.prompts.get("tokenizer", "") or "")
  if spec:
    return spec
  init_from = str(config.policy.get("init_from", "") or "")
  path = pathlib.Path(init_from)
  if init_from.endswith(".gguf") or (init_from and any(
      (path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))):
    return init_from
  for source in sources:
    run = getattr(source, "run_config", None)
    if run is not None and reward_source.run_tokenizer(run):
      return reward_source.run_tokenizer(run)
  return ""


def rollout_task(config, sources, gold: bool = True) -> RolloutTask:
  """The ``RolloutTask`` of a ``ppo`` config: with ``prompts.path`` empty the synthetic task
  of the first reward model (its policy unless ``policy.init_from`` is given, gold hook
  included); otherwise prompts from that file, tokenised with ``_tokenizer_spec``'s
  tokenizer, and the policy of ``policy.init_from``."""
  prompts_cfg = config.get("prompts") or ml_collections.ConfigDict(dict(path=""))
  if not prompts_cfg.get("path"):
    first = sources[0] if sources else None
    if first is None or not hasattr(first, "run_config"):
      raise ValueError("prompts.path is empty and no reward model workdir names a synthetic "
                       "task: give prompts.path")
    task = synthetic.build_task(_synthetic_config(first.run_config, first.name))
    out = synthetic_rollout_task(task, gold)
    if config.get("policy") and config.policy.get("init_from"):
      out = dataclasses.replace(out, policy=policy_model(config, sources),
                                name=f"policy.init_from={config.policy.init_from}")
    return out
  path = str(prompts_cfg.path)
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"prompts.path={path}: no such file")
  if not (config.get("policy") or {}).get("init_from"):
    return _synthetic_policy_on_file(config, sources, path, prompts_cfg, gold)
  policy = policy_model(config, sources)
  spec = _tokenizer_spec(config, sources)
  tokenizer = tokenize.load_tokenizer(spec) if spec else None
  rows = _prompt_rows(path, str(prompts_cfg.get("format", "") or ""),
                      bool(prompts_cfg.get("skip_bad_rows", False)))
  if not rows:
    raise DataError(f"prompts.path={path}: no prompts")
  eos = int(config.policy.get("eos_id", -1))
  if eos < 0:
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
  pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
  pad = 0 if pad is None else int(pad)
  tokens, lengths = encode_prompts(rows, tokenizer, int(prompts_cfg.get("max_len", 64)), pad)
  vocab = policy.cfg.vocab_size
  if tokens.max() >= vocab:
    raise ValueError(f"prompts.path={path}: token id {int(tokens.max())} is outside the "
                     f"policy's vocabulary of {vocab}")
  return RolloutTask(
      policy=policy, sample_prompts=file_prompt_sampler(tokens, lengths),
      prompt_width=tokens.shape[1], max_response_len=int(prompts_cfg.get(
          "max_response_len", 64)), eos_id=None if eos is None else int(eos), pad_id=pad,
      tokenizer=reward_source.tokenizer_id(spec), task="files",
      name=f"policy.init_from={config.policy.init_from} with prompts.path={path}")


def _synthetic_policy_on_file(config, sources, path, prompts_cfg, gold) -> RolloutTask:
  """The synthetic task's policy (and gold hook) on token-id prompts from a file."""
  first = sources[0] if sources else None
  if first is None or not hasattr(first, "run_config"):
    raise ValueError(f"prompts.path={path} without policy.init_from needs a reward model "
                     "workdir trained on the synthetic task (whose policy samples)")
  out = synthetic_rollout_task(
      synthetic.build_task(_synthetic_config(first.run_config, first.name)), gold)
  rows = _prompt_rows(path, str(prompts_cfg.get("format", "") or ""),
                      bool(prompts_cfg.get("skip_bad_rows", False)))
  if not rows:
    raise DataError(f"prompts.path={path}: no prompts")
  if any(isinstance(r, str) for r in rows):
    raise ValueError(f"prompts.path={path} holds text prompts, but the synthetic task's policy "
                     "reads token ids: give token-id prompts or set policy.init_from")
  tokens, lengths = encode_prompts(rows, None, int(prompts_cfg.get("max_len", 64)),
                                   synthetic.PAD)
  if tokens.max() >= out.policy.cfg.vocab_size:
    raise ValueError(f"prompts.path={path}: token id {int(tokens.max())} is outside the "
                     f"synthetic policy's vocabulary of {out.policy.cfg.vocab_size}")
  return dataclasses.replace(out, sample_prompts=file_prompt_sampler(tokens, lengths),
                             prompt_width=tokens.shape[1],
                             name=f"the synthetic task's policy on prompts.path={path}")


def rule_sources(config, task: RolloutTask, sources) -> list:
  """The ``reward.rules`` sources (``rule_rewards.RuleSource``), each scoring a response
  against the reference its prompt has in ``prompts.path`` (``prompts.reference_field``),
  the prompts encoded exactly as the rollout encodes them."""
  names = tuple(config.reward.get("rules", ()) or ())
  if not names:
    return []
  prompts_cfg = config.prompts
  path = str(prompts_cfg.get("path", "") or "")
  if not path:
    raise ValueError("reward.rules score responses against references: give prompts.path, "
                     "a file whose rows hold them (prompts.reference_field)")
  spec = _tokenizer_spec(config, sources)
  tokenizer = tokenize.load_tokenizer(spec) if spec else None
  prompts, references = rule_rewards.reference_rows(
      path, str(prompts_cfg.get("reference_field", "reference")))
  tokens, lengths = encode_prompts(prompts, tokenizer, int(prompts_cfg.get("max_len", 64)),
                                   task.pad_id)
  keys = [tuple(int(t) for t in row[:n]) for row, n in zip(tokens, lengths)]
  table = dict(zip(keys, rule_rewards.encode_references(references, tokenizer)))
  return [rule_rewards.RuleSource(name, table, task.policy.cfg.vocab_size, task.eos_id,
                                  task.tokenizer) for name in names]


def check_sources(sources, task: RolloutTask) -> None:
  """Every reward source reads the policy's token ids: the same vocabulary size, the same
  tokenizer (when the task has one) and the same task; a message names the source."""
  reward_source.check_compatible(
      sources, vocab_size=task.policy.cfg.vocab_size, tokenizer=task.tokenizer or None,
      task=task.task or None, what=task.name)
