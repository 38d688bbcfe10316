"""What each config field means: the tables behind ``rmjax <command> --help``.

Every config module in this package keeps its meanings beside its ``get_config`` as
``FIELDS``: dotted field name -> one line. Sections that several configs share (the
mesh, LoRA, the optimizer) are written once here and placed under a prefix with
``section``. ``tests/configs/test_fields.py`` checks that every field of every embedded
config has a meaning and that no meaning names a field that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

MESH = {
    "data": "devices of the data-parallel axis; -1 = every device the other axes leave",
    "fsdp": "devices over which parameters and optimizer state are sharded (FSDP)",
    "tensor": "devices of the tensor-parallel (Megatron) axis",
}
MESH_ENSEMBLE = dict(MESH, ensemble="devices over which ensemble members are spread (must "
                                    "divide ensemble.k)")
LORA = {
    "lora_rank": "LoRA rank: > 0 freezes the backbone and trains low-rank adapters; 0 = "
                 "train everything",
    "lora_alpha": "LoRA scale numerator: adapters are scaled by lora_alpha / lora_rank",
    "lora_targets": "comma-separated projections that get adapters (any of qkv, o, gate_up, "
                    "down)",
}
OPTIM = {
    "learning_rate": "peak AdamW learning rate (linear warmup, then cosine decay)",
    "warmup_steps": "optimizer updates of linear warmup from 0 to learning_rate",
    "weight_decay": "AdamW decoupled weight decay",
    "b1": "AdamW first-moment decay",
    "b2": "AdamW second-moment decay",
    "clip_norm": "clip the global gradient norm to this; 0 = no clipping",
    "grad_accum": "micro-batches whose gradients are averaged into one update",
}
# The train section of the offline policy programs (rmjax sft, rmjax dpo).
POLICY_TRAIN = {
    "steps": "optimizer steps",
    "batch_size": "rows (sft) or pairs (dpo) per step",
    "log_every": "steps per logging window",
    "eval_every": "steps between held-out evaluations (and one at the end)",
    "save_every": "steps between checkpoints (and one at the end)",
    "keep_checkpoints": "checkpoints kept (the newest)",
    "workdir": "run folder: checkpoints, metrics; an existing run resumes",
    "checkpoint_dir": "\"\" = <workdir>/checkpoints; several hosts need shared storage",
    "eval_prompts": "synthetic task: policy samples per eval for gold and KL; 0 = none",
}
# Any ModelConfig field (rmjax/models/config.py) a config's model section may set on top
# of its preset; used for model fields a config file adds beyond the embedded ones.
MODEL = {
    "preset": "model preset (rmjax.models.config.PRESETS) the other fields modify",
    "family": "architecture family (llama, gemma, gpt2, ...)",
    "vocab_size": "token ids of the embedding",
    "d_model": "width of the residual stream",
    "n_layers": "transformer blocks",
    "n_heads": "attention (query) heads",
    "n_kv_heads": "key/value heads (grouped-query attention; divides n_heads)",
    "head_dim": "width of one attention head; None = d_model // n_heads",
    "d_ff": "hidden width of the MLP",
    "max_seq_len": "longest sequence the model takes (positions)",
    "rope_theta": "RoPE base frequency",
    "rope_scaling": "RoPE scaling (e.g. Llama 3's), as (name, value) pairs",
    "norm_eps": "epsilon of the normalisation layers",
    "qkv_bias": "biases on the query/key/value projections",
    "tie_embeddings": "the LM head reuses the input embedding",
    "dropout_rate": "dropout rate inside the blocks",
    "dtype": "compute dtype (\"bfloat16\" for mixed precision)",
    "param_dtype": "dtype the parameters are stored in",
    "remat": "rematerialise each block in the backward pass (less memory, more compute)",
    "init_std": "standard deviation of the random initialisation",
    "init_from": "a GGUF file or Hugging Face folder whose backbone replaces the preset",
    **LORA,
}

# The ``dry_run`` section that turns a train-rm or rl config into a dry-run config
# (``rmjax/configs/dry_run.py``).
DRY_RUN = {
    "command": "which step to compile: \"train-rm\" or \"rl\"",
    "devices": "devices of the target mesh; the mesh must fill them",
    "memory_per_device_gib": "fail above this many GiB per device; 0 = no check",
    "topology": "libtpu topology to compile for without a TPU (e.g. \"v5p:4x4x2\"); \"\" = "
                "fake CPU devices",
    "cpu_scheduler": "XLA:CPU schedule behind the temporaries estimate: \"memory\" or "
                     "\"concurrency\"",
    "vocab_size": "token ids the data would supply",
    "seq_len": "row width the data would supply (train-rm: each side, or the packed row)",
    "prompt_len": "rl: prompt tokens of a row",
    "response_len": "rl: response tokens of a row; 0 = rl.max_new_tokens",
    "batch_size": "rows per step; 0 = train.batch_size, or the PPO minibatch",
    "report": "also write the report as JSON here; \"\" = no file",
}


def section(prefix: str, fields: Mapping[str, str]) -> dict[str, str]:
  """``fields`` with ``prefix.`` put before each name."""
  return {f"{prefix}.{name}": meaning for name, meaning in fields.items()}


def meanings(command: str) -> dict[str, str]:
  """Dotted field -> meaning for the embedded config of ``command`` (e.g. "train-rm").

  A config module's own ``FIELDS``; the dry-run config is a train-rm or rl config plus
  the ``dry_run`` section, so it takes both tables and ``DRY_RUN``.
  """
  import importlib  # pylint: disable=import-outside-toplevel  (the configs import this module)

  module = importlib.import_module(f"rmjax.configs.{command.replace('-', '_')}")
  if hasattr(module, "FIELDS"):
    return dict(module.FIELDS)
  if command == "dry-run":
    return {**meanings("rl"), **meanings("train-rm"), **section("dry_run", DRY_RUN)}
  return {}


def leaves(config, prefix: str = "") -> Iterator[tuple[str, object]]:
  """(dotted name, value) of every leaf field of a ConfigDict (or dict), in order."""
  for name, value in config.items():
    dotted = f"{prefix}{name}"
    if hasattr(value, "items"):
      yield from leaves(value, dotted + ".")
    else:
      yield dotted, value


def meaning_of(name: str, meanings: Mapping[str, str]) -> str:
  """``meanings[name]``; for a model section's field a config file adds (``model.X``,
  ``dry_run.model.X``), the ModelConfig field's meaning; else "(no description)"."""
  if name in meanings:
    return meanings[name]
  section_name, _, field = name.rpartition(".")
  if section_name.rpartition(".")[2] == "model" and field in MODEL:
    return MODEL[field]
  return "(no description)"


def format_help(config, meanings: Mapping[str, str]) -> str:
  """One block per field: ``--config.name=default`` and, indented below, its meaning."""
  lines = []
  for name, value in leaves(config):
    lines.append(f"  --config.{name}={value!r}")
    lines.append(f"      {meaning_of(name, meanings)}")
  return "\n".join(lines)
