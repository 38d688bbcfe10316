"""Default config of ``rmjax score``: add a reward to every row of a JSONL file with a
reward model trained by ``rmjax train-rm``."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/train_rm"  # The run's workdir; its latest checkpoint is loaded.
  c.input = ""  # JSONL rows {prompt, response} or {prompt, chosen, rejected}: text or ids.
  c.output = ""  # "" = <input without .jsonl[.gz]>.scored.jsonl beside the input.
  c.tokenizer = ""  # A tokenizer folder, a .gguf file, "gpt2-bpe"; "" = token-id rows.
  c.max_len = 0  # Truncate sequences to this many tokens; 0 = the model's max_seq_len.
  c.batch_size = 32  # Sequences per forward pass (rounded up to the data-parallel size).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c
