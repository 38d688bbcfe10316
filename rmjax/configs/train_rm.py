"""Default config of ``rmjax train-rm``: a Bradley–Terry reward model on the synthetic
gold-reward task, small enough to train on a laptop CPU in a few minutes."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # ensemble: devices over which an ensemble's members are spread (it must divide
  # ensemble.k); the rest of each member's work is split over data x fsdp x tensor.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, ensemble=1))
  # k reward models trained as one program (rmjax/train/ensemble.py): k = 1 is a single
  # model. Member m has its own initialisation and data order (seed of member m).
  # shared_backbone: one backbone with k reward heads instead of k full models;
  # bootstrap: there, each head weighs the shared batch's pairs by its own Poisson(1)
  # draws, so that heads do not all fit the same data.
  c.ensemble = ml_collections.ConfigDict(dict(k=1, shared_backbone=False, bootstrap=True,
                                              vectorize="auto"))
  # ModelConfig fields on top of a preset (vocab size and heads come from the data/task).
  # init_from: a GGUF file or Hugging Face folder whose backbone replaces the preset.
  c.model = ml_collections.ConfigDict(dict(
      preset="tiny_llama", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
      max_seq_len=64, init_from=""))
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic",  # or "files"
      synthetic=ml_collections.ConfigDict(dict(
          num_train_pairs=4000, num_eval_pairs=500, label_noise=0.0, seed=0)),
      # Preference files (any format rmjax.data.readers knows), split by source line
      # [start, stop); tokenizer: a .gguf file, a tokenizer folder or "gpt2-bpe".
      files=ml_collections.ConfigDict(dict(
          paths=("",), format="", tokenizer="", train_lines=(1, 2001), eval_lines=(2001, 10**9),
          skip_bad_rows=False, seq_len=256, max_response_len=192, data_dir="runs/data",
          name="pairs"))))
  c.loss = ml_collections.ConfigDict(dict(
      label_smoothing=0.0, center_coef=0.0, score_reg_coef=0.0, use_margin=False))
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=50, weight_decay=0.01, b1=0.9, b2=0.99, clip_norm=1.0,
      grad_accum=1))
  c.train = ml_collections.ConfigDict(dict(
      steps=600, batch_size=32, log_every=25, eval_every=100, save_every=200,
      keep_checkpoints=2, workdir="runs/train_rm",
      shared_prompt=False))  # encode each prompt once per pair (rmjax/data/shared_prompt.py)
  return c
