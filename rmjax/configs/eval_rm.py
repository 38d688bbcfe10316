"""Default config of ``rmjax eval-rm``: pairwise accuracy of a trained reward model on
preference sets, per subset and pair-weighted overall."""

import ml_collections

from rmjax.configs import describe


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/train_rm"  # The run's workdir; its latest checkpoint is loaded.
  # Comma-separated "name=path[:format]" entries (format: hh-rlhf, pairs, llmbar, pandalm;
  # default detected), or "llmbar": the five LLMBar/RewardBench subsets from the shared
  # data folder ($RMJAX_SHARED_DATA or ../shared/data).
  c.sets = "llmbar"
  c.name = ""  # Results go to <workdir>/eval_<name>.md/.json; "" = from the sets.
  # A tokenizer folder, a .gguf file or "gpt2-bpe"; "" = the run's own (data.files.tokenizer),
  # if it was trained on text, else token-id rows only.
  c.tokenizer = ""
  # Truncation (keeps the response end, then drops the prompt start): 0 = the run's own
  # data.files.seq_len / max_response_len, else the model's max_seq_len / no response limit.
  c.max_len = 0
  c.max_response_len = 0
  c.batch_size = 32  # Pairs per forward pass (rounded up to the data-parallel size).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c


FIELDS = {
    "workdir": "a train-rm run folder; its latest checkpoint is loaded",
    "sets": "\"synthetic\" (the run's held-out pairs) and/or name=path[:format] entries, "
            "comma-separated",
    "name": "results go to <workdir>/eval_<name>.md/.json; \"\" = named after the sets",
    "tokenizer": "a tokenizer folder, a .gguf file or \"gpt2-bpe\"; \"\" = the run's own",
    "max_len": "tokens per sequence after truncation; 0 = the run's own (or the model's)",
    "max_response_len": "tokens a response keeps (its end); 0 = the run's own (or no limit)",
    "batch_size": "pairs per forward pass (rounded up to the data-parallel size)",
    **describe.section("mesh", describe.MESH),
}
