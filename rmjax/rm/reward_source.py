"""Reward sources: what RL and best-of-n score token sequences with.

A reward source maps sequences to member rewards: ``source(tokens, mask, prompt_len=None)
-> [B, K]`` float32 for tokens [B, T] int32 and mask [B, T] bool (prompt then response,
real tokens first, right-padded), K >= 1 members; ``prompt_len`` [B] int (each row's
prompt tokens) is passed by the RL trainer and read by the sources that score a response
against its prompt (``rmjax.rl.rule_rewards``); a reward model ignores it. Beside the call
it tells a consumer what it needs to check that the source can score its sequences, and
what its numbers mean:

* ``name``: where it came from (a workdir, or a label), so that a message can name it;
* ``vocab_size``: the token ids it reads (a policy must sample below it);
* ``tokenizer``: an id of the tokenizer its token ids come from (``tokenizer_id``: a hash
  of its vocabulary; "" for token ids no tokenizer made, e.g. the synthetic task's);
* ``task``: the world it was trained in (``task_id``: the synthetic task's config, or
  "files" for preference files), which decides which prompts and policy belong to it;
* ``num_members``: K;
* ``scale``: what its rewards are, in words (a Bradley–Terry logit, BLEU in [0, 1], ...),
  so that a run that combines several says what it added.

``WorkdirSource`` wraps a ``rmjax train-rm`` run (``load.load_ensemble``);
``FunctionSource`` wraps any jitted function (a known reward in tests, a normalised or
external scorer). ``check_compatible`` checks every source of a list against one
expectation and names the first that differs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import jax

from rmjax.data import tokenize
from rmjax.rm import load as load_rm
from rmjax.tasks import preference as synthetic


@runtime_checkable
class RewardSource(Protocol):
  """Scores sequences: ``(tokens [B, T] int32, mask [B, T] bool) -> [B, K] float32``."""

  name: str
  vocab_size: int
  tokenizer: str
  task: str
  num_members: int
  scale: str

  def __call__(self, tokens: jax.Array, mask: jax.Array, prompt_len=None) -> jax.Array: ...


@functools.lru_cache(maxsize=16)
def tokenizer_id(spec: str) -> str:
  """A comparable id of a ``load_tokenizer`` spec: "sha256:<hex>" of its vocabulary and
  special tokens, so that copies of one tokenizer in different places compare equal;
  "" for none. A spec that cannot be loaded (gone, or not a tokenizer) is its own id."""
  if not spec:
    return ""
  try:
    tokenizer = tokenize.load_tokenizer(spec)
  except (OSError, ValueError):
    return str(spec)
  content = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]),
             "special": [str(getattr(tokenizer, name, None)) for name in
                         ("bos_token", "eos_token", "pad_token", "unk_token")]}
  digest = hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]
  return f"sha256:{digest}"


def task_id(run_config) -> str:
  """The world a ``train-rm`` run was trained in: "synthetic:<json>" of the synthetic
  task's config without the fields that only choose its data
  (``preference.LABEL_FIELDS``, which ``preference.build_task`` ignores too), or "files"."""
  data = run_config.get("data") or {}
  if data.get("source") != "synthetic":
    return str(data.get("source", ""))
  cfg = synthetic.from_fields(data.get("synthetic"))
  world = dataclasses.replace(cfg, **synthetic.LABEL_FIELDS)
  return "synthetic:" + json.dumps(dataclasses.asdict(world), sort_keys=True)


def run_tokenizer(run_config) -> str:
  """The tokenizer spec a ``train-rm`` run read its preference files with ("" = none)."""
  data = run_config.get("data") or {}
  files = data.get("files") or {}
  return files.get("tokenizer", "") if data.get("source") == "files" else ""


class WorkdirSource:
  """A trained reward model or ensemble (``members.RewardEnsemble``) with its run's
  identity; ``ensemble`` and ``run_config`` stay readable (the critic starts from it).

  A run with Gaussian heads (``ensemble.gaussian``) scores with its predicted means, and
  ``has_stds`` says that ``with_stds`` gives the predicted stds beside them (what BRME's
  nominal reward reads, ``rmjax.rl.rewards``)."""

  def __init__(self, ensemble, run_config, name: str):
    self.ensemble, self.run_config, self.name = ensemble, run_config, name
    self.vocab_size = int(ensemble.cfg.vocab_size)
    self.tokenizer = tokenizer_id(run_tokenizer(run_config))
    self.task = task_id(run_config)
    self.num_members = int(ensemble.k)
    self.has_stds = bool(ensemble.has_stds)
    self.scale = ("Bradley–Terry logits (unbounded; only differences are meaningful), one per "
                  f"member of {self.num_members}")
    if self.has_stds:
      self.scale = ("means of Gaussian rewards under a probit preference link (unbounded; "
                    f"only differences are meaningful), each with a std, one per member of "
                    f"{self.num_members}")

  def __call__(self, tokens, mask, prompt_len=None):
    del prompt_len  # a reward model reads the whole sequence
    return self.ensemble(tokens, mask)

  def with_stds(self, tokens, mask, prompt_len=None):
    """(means [B, K], predicted stds [B, K]) of a run with Gaussian heads, one pass."""
    del prompt_len
    return self.ensemble.with_stds(tokens, mask)


def from_workdir(workdir, mesh=None) -> WorkdirSource:
  """The reward source of a ``rmjax train-rm`` run's latest checkpoint."""
  ensemble, run_config = load_rm.load_ensemble(workdir, mesh)
  return WorkdirSource(ensemble, run_config, str(workdir))


@dataclasses.dataclass
class FunctionSource:
  """``fn(tokens, mask) -> [B, K]`` (or [B] for one member) as a reward source."""

  fn: Callable
  vocab_size: int
  num_members: int = 1
  tokenizer: str = ""
  task: str = ""
  name: str = "function"
  scale: str = "as the function returns it (not stated)"

  def __call__(self, tokens, mask, prompt_len=None):
    del prompt_len
    out = self.fn(tokens, mask)
    return out[:, None] if out.ndim == 1 else out


def check_compatible(sources: Sequence[RewardSource], *, vocab_size: int | None = None,
                     tokenizer: str | None = None, task: str | None = None,
                     what: str = "the policy") -> None:
  """Every source reads ``vocab_size`` token ids, made by ``tokenizer``, in ``task``; a
  field given as None is checked against the first source instead (all must agree). A
  ValueError names the first source that differs, and from what. A source's empty
  ``task`` (an unknown world, e.g. a function) matches any."""
  if not sources:
    raise ValueError("no reward source: reward.workdirs is empty; train a reward model "
                     "with rmjax train-rm")
  first = sources[0]
  given = {"vocab_size": vocab_size, "tokenizer": tokenizer, "task": task}
  show = lambda v: (v[:160] + "...") if isinstance(v, str) and len(v) > 160 else v
  for source in sources:
    for field, want in given.items():
      against = what if want is not None else f"the first reward model {first.name}"
      want = getattr(first, field) if want is None else want
      got = getattr(source, field)
      if field == "task" and (not got or not want):
        continue
      if got != want:
        raise ValueError(f"reward model {source.name}: its {field} {show(got)!r} differs "
                         f"from {against}'s {show(want)!r}")
