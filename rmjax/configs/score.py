"""Default config of ``rmjax score``: add a reward to every row of a JSONL file with a
reward model trained by ``rmjax train-rm``, or with the implicit reward of an ``rmjax dpo``
run's policy."""

import ml_collections

from rmjax.configs import describe


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # A train-rm run's workdir, or a dpo run's (its implicit reward); its latest checkpoint
  # is loaded.
  c.workdir = "runs/train_rm"
  c.input = ""  # JSONL rows {prompt, response} or {prompt, chosen, rejected}: text or ids.
  c.output = ""  # "" = <input without .jsonl[.gz]>.scored.jsonl beside the input.
  # A tokenizer folder, a .gguf file or "gpt2-bpe"; "" = the run's own (data.files.tokenizer),
  # if it was trained on text, else token-id rows only.
  c.tokenizer = ""
  # Truncation (keeps the response end, then drops the prompt start): 0 = the run's own
  # data.files.seq_len / max_response_len, else the model's max_seq_len / no response limit.
  c.max_len = 0
  c.max_response_len = 0
  c.batch_size = 32  # Sequences per forward pass (rounded up to the data-parallel size).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c


FIELDS = {
    "workdir": "a train-rm or dpo run folder (dpo: its implicit reward); its latest "
               "checkpoint is loaded",
    "input": "JSONL rows {prompt, response} or {prompt, chosen, rejected}: text or token ids",
    "output": "JSONL to write; \"\" = <input>.scored.jsonl beside the input",
    "tokenizer": "a tokenizer folder, a .gguf file or \"gpt2-bpe\"; \"\" = the run's own",
    "max_len": "tokens per sequence after truncation; 0 = the run's own (or the model's)",
    "max_response_len": "tokens a response keeps (its end); 0 = the run's own (or no limit)",
    "batch_size": "sequences per forward pass (rounded up to the data-parallel size)",
    **describe.section("mesh", describe.MESH),
}
