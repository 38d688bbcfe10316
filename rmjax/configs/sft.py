"""Default config of ``rmjax sft``: supervised fine-tuning of the synthetic task's base
policy on the chosen responses of the synthetic task's pairs, small enough for a laptop CPU.

``data.source="best_of_n"`` is rejection-sampling fine-tuning (RAFT, ReST): the best of
``n`` base-policy samples per prompt by a reward model (``data.best_of_n.reward``, a
train-rm workdir, or a dpo workdir: its implicit reward) or by the gold reward ("gold",
the control) become the rows.
"""

import ml_collections

from rmjax.configs import describe, train_rm


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  rm_data = train_rm.get_config().data
  # source: "synthetic" (chosen responses of the synthetic pairs), "files" ({"prompt",
  # "response"} rows, or a preference format's chosen responses; format "sft" or "" =
  # detected) or "best_of_n" (rejection sampling on the synthetic task's prompts).
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic", synthetic=rm_data.synthetic,
      files=ml_collections.ConfigDict(dict(
          paths=("",), format="", tokenizer="", train_lines=(1, 2001),
          eval_lines=(2001, 10**9), skip_bad_rows=False, seq_len=256, max_response_len=192)),
      best_of_n=ml_collections.ConfigDict(dict(
          prompts=1024, n=8, reward="runs/train_rm", temperature=1.0))))
  c.data.synthetic.update(num_train_pairs=2000, num_eval_pairs=256)
  # "" = the synthetic task's base policy; else a Hugging Face folder, a .gguf file or an
  # rmjax rl, dpo or sft workdir (its trained policy).
  c.policy = ml_collections.ConfigDict(dict(init_from=""))
  # The weight of the prompt's own next-token predictions in the loss: 0 = response tokens
  # only (the usual SFT), 1 = every token alike.
  c.sft = ml_collections.ConfigDict(dict(prompt_loss_weight=0.0))
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-4, warmup_steps=10, weight_decay=0.0, b1=0.9, b2=0.95, clip_norm=1.0,
      grad_accum=1))
  c.train = ml_collections.ConfigDict(dict(
      steps=200, batch_size=16, log_every=10, eval_every=50, save_every=50,
      keep_checkpoints=2, workdir="runs/sft", checkpoint_dir="", eval_prompts=128))
  return c


FIELDS = {
    "seed": "seed of the data order, the best-of-n samples and the evaluation samples",
    **describe.section("mesh", describe.MESH),
    "data.source": "\"synthetic\", \"files\" or \"best_of_n\" (rejection sampling)",
    **{k: v for k, v in train_rm.FIELDS.items() if k.startswith("data.synthetic.")},
    "data.files.paths": "{\"prompt\", \"response\"} files or preference files, in order",
    "data.files.format": "\"sft\", a preference format, or \"\" = detected from the first row",
    "data.files.tokenizer": "a .gguf file, a tokenizer folder or \"gpt2-bpe\"",
    "data.files.train_lines": "rows [start, stop) (1-based, over the files in order) to train on",
    "data.files.eval_lines": "rows [start, stop) held out",
    "data.files.skip_bad_rows": "drop malformed rows instead of stopping",
    "data.files.seq_len": "tokens of a row (prompt + response) after truncation",
    "data.files.max_response_len": "tokens a response keeps before the prompt is cut",
    "data.best_of_n.prompts": "synthetic prompts, one kept row each",
    "data.best_of_n.n": "samples per prompt to choose from",
    "data.best_of_n.reward": "a train-rm workdir (its members' mean), a dpo workdir (its implicit "
                              "reward) or \"gold\" (the control)",
    "data.best_of_n.temperature": "sampling temperature of the candidates",
    "policy.init_from": "\"\" = the synthetic base policy; a Hugging Face folder, a .gguf "
                        "file or an rl, dpo or sft workdir",
    "sft.prompt_loss_weight": "weight of the prompt tokens' predictions; 0 = response only",
    **describe.section("optim", describe.OPTIM),
    **describe.section("train", describe.POLICY_TRAIN),
}
