"""The valid range of every numeric config field, checked by the CLI before a command runs.

One table, ``RANGES``: dotted field name -> ``Range``. It applies to any config (embedded
or ``--config=FILE``) that has the field, so ``rmjax <command>`` rejects an out-of-range
value before it creates a run folder or loads anything. ``check(config)`` returns one
message per bad field, naming the field, its value and the allowed range.
``tests/configs/test_ranges.py`` checks that every numeric field of every embedded config
is in the table (or in ``UNBOUNDED``).
"""

from __future__ import annotations

import dataclasses
import math

from rmjax.configs import describe


@dataclasses.dataclass(frozen=True)
class Range:
  """``low`` <= x <= ``high`` (``<`` where ``*_open``; None: no bound), or x in ``also``
  (sentinels such as -1 = "the default" or 0 = "off")."""

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  also: tuple = ()

  def __contains__(self, x) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
      return False
    if x in self.also:
      return True
    if not math.isfinite(x):
      return False
    if self.low is not None and (x <= self.low if self.low_open else x < self.low):
      return False
    return self.high is None or (x < self.high if self.high_open else x <= self.high)

  def describe(self) -> str:
    if self.low is not None and self.high is not None:
      text = (f"in {'(' if self.low_open else '['}{_num(self.low)}, "
              f"{_num(self.high)}{')' if self.high_open else ']'}")
    elif self.low is not None:
      text = f"{'>' if self.low_open else '>='} {_num(self.low)}"
    elif self.high is not None:
      text = f"{'<' if self.high_open else '<='} {_num(self.high)}"
    else:
      text = "finite"
    if self.also:
      text = " or ".join(_num(a) for a in self.also) + " or " + text
    return text


def _num(x) -> str:
  return f"{x:g}" if isinstance(x, float) else str(x)


AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1, high_open=True)  # a rate or probability
DECAY = Range(0, 1, high_open=True)  # Adam's b1, b2
SMOOTHING = Range(0, 0.5, high_open=True)  # label smoothing: 0.5 makes every label a coin
MESH_AXIS = Range(1, also=(-1,))  # -1: the devices the other axes leave
TOP_P = Range(0, 1, low_open=True)
OPTIONAL_INDEX = Range(0, also=(-1,))  # -1: the default (latest, every, the tokenizer's)
SEED = Range(0, 2**32, high_open=True)

OPTIM = {"learning_rate": POSITIVE, "warmup_steps": AT_LEAST_0, "weight_decay": AT_LEAST_0,
         "b1": DECAY, "b2": DECAY, "clip_norm": AT_LEAST_0, "grad_accum": AT_LEAST_1}
LORA = {"lora_rank": AT_LEAST_0, "lora_alpha": POSITIVE}


def _under(prefix: str, table: dict) -> dict:
  return {f"{prefix}.{name}": r for name, r in table.items()}


RANGES: dict[str, Range] = {
    # Shared by several commands.
    "seed": SEED,
    **_under("mesh", {axis: MESH_AXIS for axis in describe.MESH_ENSEMBLE}),
    "batch_size": AT_LEAST_1,  # eval-rm, score, score-pairs
    "max_len": AT_LEAST_0,  # eval-rm, score: 0 = the run's own
    "max_response_len": AT_LEAST_0,
    "train.steps": AT_LEAST_1,
    "train.batch_size": AT_LEAST_1,
    "train.log_every": AT_LEAST_1,
    "train.eval_every": AT_LEAST_1,
    "train.save_every": AT_LEAST_1,
    "train.keep_checkpoints": AT_LEAST_1,
    # demo
    "batch": AT_LEAST_1, "prompt_len": AT_LEAST_1, "new_tokens": AT_LEAST_1,
    "temperature": POSITIVE, "top_k": AT_LEAST_0, "top_p": TOP_P,
    # train-rm
    "ensemble.k": AT_LEAST_1,
    "ensemble.folds": Range(2, also=(0,)),  # 0 = off
    **_under("model", {f: AT_LEAST_1 for f in ("d_model", "n_layers", "n_heads", "n_kv_heads",
                                               "d_ff", "max_seq_len")}),
    **_under("model", LORA),
    "data.synthetic.num_train_pairs": AT_LEAST_1,
    "data.synthetic.num_eval_pairs": AT_LEAST_1,
    "data.synthetic.label_noise": Range(0, 0.5),  # 0.5: labels are coin flips
    "data.synthetic.seed": SEED,
    "data.synthetic.version": Range(1, 2),
    "data.synthetic.confidence_bias": AT_LEAST_0,
    "data.files.seq_len": AT_LEAST_1,
    "data.files.max_response_len": AT_LEAST_1,
    "data.strength.flip_fraction": FRACTION,
    "data.strength.smoothing": SMOOTHING,
    "loss.label_smoothing": SMOOTHING,
    "loss.center_coef": AT_LEAST_0,
    "loss.score_reg_coef": AT_LEAST_0,
    "loss.contrastive.beta": Range(0, also=(-1,)),  # -1 = the paper's value
    "loss.contrastive.temperature": Range(0, low_open=True, also=(-1,)),
    "loss.contrastive.dropout": FRACTION,
    "loss.contrastive.prototypes": Range(1, also=(-1,)),
    "loss.contrastive.sinkhorn_epsilon": POSITIVE,
    "loss.contrastive.sinkhorn_iterations": AT_LEAST_1,
    **_under("optim", OPTIM),
    "metarm.eta": POSITIVE,
    "metarm.k": Range(2),  # the difference loss compares responses
    "metarm.prompts_per_step": AT_LEAST_1,
    "metarm.num_prompts": AT_LEAST_1,
    "metarm.temperature": POSITIVE,
    "metarm.top_k": AT_LEAST_0,
    "metarm.best_of": Range(2),  # selection needs a choice
    # export-hf
    "step": OPTIONAL_INDEX, "member": OPTIONAL_INDEX, "pad_token_id": OPTIONAL_INDEX,
    # ppo
    "reward.uwo_lam": AT_LEAST_0,
    "reward.brme_lam": AT_LEAST_0,
    "reward.norm_batches": AT_LEAST_1,
    "reward.constraint_lr": POSITIVE,
    "reward.calibration_w": AT_LEAST_0,
    "reward.calibration_alpha": Range(0, 1, low_open=True),
    "policy.eos_id": OPTIONAL_INDEX,  # -1 = the tokenizer's EOS
    "prompts.max_len": AT_LEAST_1,
    "prompts.max_response_len": AT_LEAST_1,
    "reward.lsc_quantile": Range(0, 1),
    "reward.lsc_samples": AT_LEAST_1,
    "reward.clip": AT_LEAST_0,  # 0 = no clipping
    **_under("actor", LORA), **_under("critic", LORA),
    "rl.group_eps": POSITIVE,
    "rl.iterations": AT_LEAST_1,
    "rl.prompts": AT_LEAST_1,
    "rl.samples_per_prompt": AT_LEAST_1,
    "rl.max_new_tokens": AT_LEAST_0,  # 0 = the task's max_response_len
    "rl.temperature": POSITIVE,
    "rl.top_k": AT_LEAST_0,
    "rl.top_p": TOP_P,
    "rl.epochs": AT_LEAST_1,
    "rl.minibatches": AT_LEAST_1,
    "rl.clip_eps": POSITIVE,
    "rl.value_clip": AT_LEAST_0,
    "rl.gamma": Range(0, 1),
    "rl.lam": Range(0, 1),
    "rl.advantage_clip": AT_LEAST_0,  # 0 = no clipping
    "rl.entropy_coef": AT_LEAST_0,
    "rl.ptx_coef": AT_LEAST_0,
    "rl.ptx_sequences": AT_LEAST_1,
    "kl.coef": AT_LEAST_0,
    "kl.target": POSITIVE,
    "kl.horizon": AT_LEAST_1,
    **_under("optim.actor", OPTIM), **_under("optim.critic", OPTIM),
    # dpo
    "dpo.beta": POSITIVE,
    "dpo.label_smoothing": SMOOTHING,
    "dpo.simpo_gamma": AT_LEAST_0,
    "dpo.orpo_lambda": AT_LEAST_0,
    "dpo.kto_desirable_weight": AT_LEAST_0,
    "dpo.kto_undesirable_weight": AT_LEAST_0,
    "train.eval_prompts": AT_LEAST_0,  # 0 = no policy samples in the evaluation
    "dpo.online.rounds": AT_LEAST_0,  # 0 = offline
    "dpo.online.prompts": AT_LEAST_1,
    "dpo.online.samples": Range(2),  # a pair needs two
    "dpo.online.updates": AT_LEAST_1,
    "dpo.online.temperature": POSITIVE,
    "dpo.online.optimism": AT_LEAST_0,  # SELM's alpha; 0 = off
    # sft
    "sft.prompt_loss_weight": AT_LEAST_0,
    "data.best_of_n.prompts": AT_LEAST_1,
    "data.best_of_n.n": AT_LEAST_1,
    "data.best_of_n.temperature": POSITIVE,
    # dry-run
    "dry_run.devices": AT_LEAST_1,
    "dry_run.memory_per_device_gib": AT_LEAST_0,
    "dry_run.vocab_size": AT_LEAST_1,
    "dry_run.seq_len": AT_LEAST_1,
    "dry_run.prompt_len": AT_LEAST_0,
    "dry_run.response_len": AT_LEAST_0,
    "dry_run.batch_size": AT_LEAST_0,
}

# Numeric fields with no range to check.
UNBOUNDED: frozenset[str] = frozenset()


def check(config) -> list[str]:
  """One message per field of ``config`` whose value lies outside its ``RANGES`` entry."""
  problems = []
  for name, value in describe.leaves(config):
    allowed = RANGES.get(name)
    if allowed is not None and value is not None and value not in allowed:
      problems.append(f"{name}={value!r} must be {allowed.describe()}")
  return problems
