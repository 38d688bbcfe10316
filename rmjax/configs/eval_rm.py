"""Default config of ``rmjax eval-rm``: pairwise accuracy of a trained reward model on
preference sets, per subset and pair-weighted overall."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/train_rm"  # The run's workdir; its latest checkpoint is loaded.
  # Comma-separated "name=path[:format]" entries (format: hh-rlhf, pairs, llmbar, pandalm;
  # default detected), or "llmbar": the five LLMBar/RewardBench subsets from the shared
  # data folder ($RMJAX_SHARED_DATA or ../shared/data).
  c.sets = "llmbar"
  c.name = ""  # Results go to <workdir>/eval_<name>.md/.json; "" = from the sets.
  c.tokenizer = ""  # A tokenizer folder, a .gguf file, "gpt2-bpe"; "" = token-id pairs.
  c.max_len = 0  # Truncate sequences to this many tokens; 0 = the model's max_seq_len.
  c.batch_size = 32  # Pairs per forward pass (rounded up to the data-parallel size).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c
