"""The reward ``rmjax score`` and ``rmjax eval-rm`` read from a trained run, whichever
program trained it.

A ``train-rm`` run scores with its reward model or ensemble (K member rewards,
``rm/reward_source.py``). An ``rmjax dpo`` run scores with its policy's implicit reward
under the loss that trained it, one member (``rl/implicit_reward.py``,
``docs/algorithms.md`` §7): β·(log π(y | x) − log π_ref(y | x)) summed over the response
tokens for dpo, cdpo, ipo and kto (π_ref the policy the run started from, β its
``dpo.beta``), SimPO's β·log π/|y|, ORPO's log odds. That reward is conditioned on the
prompt, so every sequence is scored with its prompt length (which a reward model ignores).
Which program wrote a run is read from the config stored with its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from rmjax.data import schema, tokenize
from rmjax.data.schema import DataError
from rmjax.rl import build
from rmjax.rm import evaluate as rm_evaluate
from rmjax.rm import load as load_rm
from rmjax.rm import reward_source
from rmjax.rm.step import make_eval_step


@dataclasses.dataclass(frozen=True)
class TrainedReward:
  """A run's reward, the same interface for either kind of run.

  ``self(tokens, mask, prompt_len) -> [B, K]``: float32 rewards of right-padded prompt +
  response rows with ``prompt_len`` [B] int prompt tokens (``source``, the run's reward
  source, gives them); ``pair_fn(params, batch)`` -> {"r_chosen", "r_rejected"} [B, K]
  (and a Gaussian head's "std_chosen", "std_rejected") of a pair batch with
  "prompt_len", what ``rm.evaluate.evaluate`` reads; ``cfg``: the ModelConfig whose
  vocabulary and ``max_seq_len`` the rows must fit; ``run_config``: the run's config with
  ``checkpoint`` (directory, step); ``what``: the reward in words; ``needs_prompt``:
  whether a row must have a prompt (a DPO run's reward is conditioned on it).
  """

  source: Any
  pair_fn: Callable
  params: Any
  cfg: Any
  run_config: ml_collections.ConfigDict
  what: str
  needs_prompt: bool = False

  @property
  def k(self) -> int:
    return int(self.source.num_members)

  def __call__(self, tokens, mask, prompt_len):
    return self.source(tokens, mask, prompt_len)

  def check_prompt(self, prompt, where: str) -> None:
    """A DataError naming ``where`` when the reward needs a prompt and ``prompt`` (text or
    token ids) is empty."""
    if self.needs_prompt and not len(prompt):
      raise DataError(f"{where}: field 'prompt' is empty or missing, but {self.source.name} "
                      "is a dpo run: its implicit reward beta * log(pi(y | x) / "
                      "pi_ref(y | x)) is conditioned on the prompt x")

  def evaluate(self, arrays, batch_size: int, mesh) -> dict[str, float]:
    """Held-out metrics of the pairs ``arrays`` (``rm.evaluate.evaluate``)."""
    return rm_evaluate.evaluate(self.pair_fn, self.params, arrays, batch_size, mesh)


def load(workdir, mesh) -> TrainedReward:
  """The reward of the latest checkpoint of a ``train-rm`` or ``dpo`` run, on ``mesh``.

  A workdir with no committed checkpoint, or one another program wrote, is a one-line
  error naming it.
  """
  try:
    directory = load_rm.checkpoint_dir(workdir)
  except FileNotFoundError:
    raise FileNotFoundError(f"{workdir}: no committed checkpoint (looked for "
                            f"{workdir}/checkpoints/<step>); score and eval-rm read the "
                            "latest checkpoint of an rmjax train-rm or dpo run") from None
  step, stored = load_rm.read_provenance(workdir)
  run = ml_collections.ConfigDict(stored.get("config") or {})
  program = build.run_program(run)
  if program == "dpo":
    return _dpo_reward(workdir, run, directory, step, mesh)
  if program or "model" not in run:
    kind = f"an rmjax {program} run" if program else "no rmjax train-rm or dpo run"
    raise ValueError(f"{workdir}: {kind} (its stored config has neither a 'model' nor a "
                     "'dpo' section); score and eval-rm read a train-rm run's reward model "
                     "or a dpo run's implicit reward")
  return _model_reward(workdir, mesh)


def _model_reward(workdir, mesh) -> TrainedReward:
  source = reward_source.from_workdir(workdir, mesh)
  model = source.ensemble
  what = f"ensemble of {model.k}, their mean" if model.k > 1 else "reward model"
  return TrainedReward(source, jax.jit(make_eval_step(model.graphdef, model.layout)),
                       model.params, model.cfg, source.run_config, what)


def _dpo_reward(workdir, run, directory, step: int, mesh) -> TrainedReward:
  source = build.dpo_source(workdir, mesh)

  def pair_fn(params, batch):
    del params  # the source holds the policy and its reference
    plen = batch[tokenize.PROMPT_LEN]
    return {"r_chosen": source(batch[schema.CHOSEN_TOKENS], batch[schema.CHOSEN_MASK], plen),
            "r_rejected": source(batch[schema.REJECTED_TOKENS], batch[schema.REJECTED_MASK],
                                 plen)}

  run.checkpoint = ml_collections.ConfigDict(dict(directory=str(directory), step=step))
  return TrainedReward(source, pair_fn, None, source.cfg, run,
                       f"DPO-family implicit reward, loss {source.loss}, beta {source.beta:g}",
                       needs_prompt=True)
