"""Default config of ``rmjax eval-rm``: pairwise accuracy of a trained reward model (or of
an ``rmjax dpo`` run's implicit reward) on preference sets, per subset and pair-weighted
overall."""

import ml_collections

from rmjax.configs import describe


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # A train-rm run's workdir, or a dpo run's (its implicit reward); its latest checkpoint
  # is loaded.
  c.workdir = "runs/train_rm"
  # Comma-separated entries: "synthetic" (the held-out pairs of the synthetic task the run
  # trained on), "llmbar=FOLDER" (the five LLMBar/RewardBench subsets of an LLMBar
  # checkout), "name=path[:format]" (a preference file; format: hh-rlhf, pairs, llmbar,
  # pandalm; default detected).
  c.sets = "synthetic"
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
    "workdir": "a train-rm or dpo run folder (dpo: its implicit reward); its latest "
               "checkpoint is loaded",
    "sets": "comma-separated: \"synthetic\" (the run's held-out pairs), llmbar=FOLDER, "
            "name=path[:format]",
    "name": "results go to <workdir>/eval_<name>.md/.json; \"\" = named after the sets",
    "tokenizer": "a tokenizer folder, a .gguf file or \"gpt2-bpe\"; \"\" = the run's own",
    "max_len": "tokens per sequence after truncation; 0 = the run's own (or the model's)",
    "max_response_len": "tokens a response keeps (its end); 0 = the run's own (or no limit)",
    "batch_size": "pairs per forward pass (rounded up to the data-parallel size)",
    **describe.section("mesh", describe.MESH),
}
