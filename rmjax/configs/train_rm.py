"""Default config of ``rmjax train-rm``: a Bradley–Terry reward model on the synthetic
gold-reward task, small enough to train on a laptop CPU in a few minutes."""

import ml_collections

from rmjax.configs import describe


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # ensemble: devices over which an ensemble's members are spread (it must divide
  # ensemble.k); the rest of each member's work is split over data x fsdp x tensor.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, ensemble=1))
  # k reward models trained as one program (rmjax/rm/members.py): k = 1 is a single
  # model. Member m has its own initialisation and data order (seed of member m).
  # shared_backbone: one backbone with k reward heads instead of k full models;
  # bootstrap: there, each head weighs the shared batch's pairs by its own Poisson(1)
  # draws, so that heads do not all fit the same data.
  # folds: F >= 2 splits the pairs into F folds, member m trained without fold m % F, for
  # out-of-fold preference strength (rmjax score-pairs); 0 = every member sees every pair.
  # gaussian: each member predicts a mean and a log-std of its reward, trained with the
  # Gaussian preference NLL (BRME; rmjax/objectives/gaussian.py); any k, either layout.
  c.ensemble = ml_collections.ConfigDict(dict(k=1, shared_backbone=False, bootstrap=True,
                                              vectorize="auto", folds=0, gaussian=False))
  # ModelConfig fields on top of a preset (vocab size and heads come from the data/task).
  # init_from: a GGUF file or Hugging Face folder whose backbone replaces the preset.
  # LoRA (rmjax/models/lora.py): lora_rank > 0 freezes the backbone and trains low-rank
  # adapters (scale lora_alpha / lora_rank) on the projections in lora_targets (any of
  # qkv, o, gate_up, down) plus the reward heads; 0 trains everything.
  c.model = ml_collections.ConfigDict(dict(
      preset="tiny_llama", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
      max_seq_len=64, init_from="", lora_rank=0, lora_alpha=16.0,
      lora_targets="qkv,o,gate_up,down"))
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic",  # or "files"
      synthetic=ml_collections.ConfigDict(dict(
          num_train_pairs=4000, num_eval_pairs=500, label_noise=0.0, seed=0,
          label_by="total",  # or gold terms joined by "+", e.g. "harmless"
          confidence_bias=0.0,  # labels favour stated confidence (rmjax/tasks/confidence.py)
          version=2)),  # 1: the task before issue #15 (gold turns in the length tail)
      # PPO-M's calibrated reward modelling (Leng et al.): add, for every training pair,
      # (chosen stating confidence 10/10 > the same stating 0/10) and (rejected stating 0/10 >
      # the same stating 10/10). Synthetic task only (its responses state a confidence).
      calibration_pairs=False,
      # Preference files (any format rmjax.data.readers knows), split by source line
      # [start, stop); tokenizer: a .gguf file, a tokenizer folder or "gpt2-bpe".
      files=ml_collections.ConfigDict(dict(
          paths=("",), format="", tokenizer="", train_lines=(1, 2001), eval_lines=(2001, 10**9),
          skip_bad_rows=False, seq_len=256, max_response_len=192, data_dir="runs/data",
          name="pairs")),
      # Secrets-II options from a strength file of these pairs (rmjax score-pairs): flip the
      # labels of the lowest-strength fraction; label smoothing alpha on pairs with mu < 0;
      # the adaptive margin -log sigmoid(delta - mu). Flips come first (mu -> -mu).
      strength=ml_collections.ConfigDict(dict(
          path="", flip_fraction=0.0, smoothing=0.0, adaptive_margin=False))))
  c.loss = ml_collections.ConfigDict(dict(
      label_smoothing=0.0, center_coef=0.0, score_reg_coef=0.0, use_margin=False))
  # A contrastive term beta * L_cl added to the BT loss (rmjax/rm/contrastive_terms.py):
  # kind "none", "simcse", "swav" or "goal"; view "difference" or "pair" (simcse, swav).
  # -1 = the paper's value for the kind and view: beta simcse 1, swav 0.5 (difference) /
  # 0.1 (pair), goal 0.5; temperature simcse 0.05, swav 0.1; prototypes 20 (difference) /
  # 50 (pair). dropout: the rate that makes the two views (simcse, swav).
  c.loss.contrastive = ml_collections.ConfigDict(dict(
      kind="none", view="difference", beta=-1.0, temperature=-1.0, dropout=0.05,
      prototypes=-1, sinkhorn_epsilon=0.05, sinkhorn_iterations=3))
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=50, weight_decay=0.01, b1=0.9, b2=0.99, clip_norm=1.0,
      grad_accum=1))
  c.train = ml_collections.ConfigDict(dict(
      steps=600, batch_size=32, log_every=25, eval_every=100, save_every=200,
      keep_checkpoints=2, workdir="runs/train_rm",
      # "" = <workdir>/checkpoints; a multi-host run needs storage every host sees (gs://...)
      checkpoint_dir="",
      shared_prompt=False))  # encode each prompt once per pair (rmjax/data/shared_prompt.py)
  # MetaRM (rmjax/rm/metarm.py): before each step, theta' = theta + eta * grad J(theta),
  # J the difference loss on k responses to each of prompts_per_step meta prompts; the BT
  # gradient is taken through theta' (first_order: at theta', applied to theta). The meta
  # set must hold responses of the policy the RM will be used against (shifted off the
  # preference data): responses (an .npz of tokens/mask [P, k, T]) or, when empty, k
  # samples for each of the first num_prompts training prompts of policy
  # "synthetic_best_of_n" (each the gold-best of best_of base-policy samples: a stand-in
  # for an optimised policy) or "synthetic" (the base policy itself at temperature/top_k,
  # no shift). eta is open in the paper; metarm.py says why 0.1.
  c.metarm = ml_collections.ConfigDict(dict(
      enabled=False, eta=0.1, first_order=False, k=4, prompts_per_step=8, num_prompts=256,
      policy="synthetic_best_of_n", best_of=8, responses="", temperature=1.0, top_k=0))
  return c


FIELDS = {
    "seed": "seed of initialisation and data order (member m of an ensemble derives its own)",
    **describe.section("mesh", describe.MESH_ENSEMBLE),
    "ensemble.k": "reward models trained as one program; 1 = a single model",
    "ensemble.shared_backbone": "one backbone with k reward heads instead of k full models",
    "ensemble.bootstrap": "shared backbone: each head weighs the batch's pairs by its own "
                          "Poisson(1) draws",
    "ensemble.vectorize": "separate members run batched (vmap), one after another (map), or "
                          "auto",
    "ensemble.folds": "F >= 2: member m never trains on fold m % F (out-of-fold strength); "
                      "0 = off",
    "ensemble.gaussian": "each member predicts a Gaussian reward (a mean and a std head), "
                         "trained with the probit preference NLL (BRME)",
    "model.preset": "model preset (rmjax.models.config.PRESETS) the fields below modify",
    "model.d_model": "width of the residual stream",
    "model.n_layers": "transformer blocks",
    "model.n_heads": "attention (query) heads",
    "model.n_kv_heads": "key/value heads (grouped-query attention; divides n_heads)",
    "model.d_ff": "hidden width of the MLP",
    "model.max_seq_len": "longest sequence the model takes (positions)",
    "model.init_from": "a GGUF file or Hugging Face folder whose backbone replaces the preset; "
                       "\"\" = random init",
    **describe.section("model", describe.LORA),
    "data.source": "\"synthetic\" (the gold-reward task) or \"files\" (data.files)",
    "data.synthetic.num_train_pairs": "training pairs of the synthetic task",
    "data.synthetic.num_eval_pairs": "held-out pairs of the synthetic task",
    "data.synthetic.label_noise": "fraction of training pairs whose label is swapped",
    "data.synthetic.seed": "seed of the synthetic task (base policy, gold reward, pairs)",
    "data.synthetic.version": "synthetic task version: 2 (gold turns inside the base "
                              "distribution, two features) or 1 (the turn in the length tail)",
    "data.synthetic.label_by": "gold terms that label pairs: \"total\" or terms joined by "
                               "\"+\" (helpful, harmless, length)",
    "data.synthetic.confidence_bias": "labels favour the confidence a response states: the "
                                      "labelling score gains bias * (c - 0.5)",
    "data.calibration_pairs": "PPO-M: add each training pair's confidence restatements "
                              "(chosen: high > low; rejected: low > high)",
    "data.files.paths": "preference files (any format rmjax.data.readers reads), in order",
    "data.files.format": "hh-rlhf, pairs, llmbar or pandalm; \"\" = detected from the first row",
    "data.files.tokenizer": "a .gguf file, a tokenizer folder or \"gpt2-bpe\"",
    "data.files.train_lines": "source lines [start, stop) of the training split",
    "data.files.eval_lines": "source lines [start, stop) of the held-out split",
    "data.files.skip_bad_rows": "drop malformed rows (reported) instead of stopping at the "
                                "first",
    "data.files.seq_len": "tokens per side of a pair (prompt + response), after truncation",
    "data.files.max_response_len": "tokens a response keeps (its end) before the prompt is cut",
    "data.files.data_dir": "folder of the prepared (tokenised) datasets",
    "data.files.name": "name of the prepared dataset under data_dir (a new name prepares "
                       "afresh)",
    "data.strength.path": "strength file of these pairs (rmjax score-pairs); \"\" = none",
    "data.strength.flip_fraction": "flip the labels of this lowest-strength fraction of pairs",
    "data.strength.smoothing": "label smoothing alpha on pairs whose strength mu < 0",
    "data.strength.adaptive_margin": "add the adaptive margin -log sigmoid(delta - mu)",
    "loss.label_smoothing": "Bradley-Terry label smoothing alpha on every pair",
    "loss.center_coef": "weight of the penalty (r_chosen + r_rejected)^2 that centres rewards",
    "loss.score_reg_coef": "weight of the penalty (r_chosen^2 + r_rejected^2) / 2",
    "loss.use_margin": "subtract each pair's margin field inside the sigmoid",
    "loss.contrastive.kind": "contrastive auxiliary loss: none, simcse, swav or goal",
    "loss.contrastive.view": "what simcse/swav contrast: \"difference\" or \"pair\"",
    "loss.contrastive.beta": "weight of the contrastive term; -1 = the paper's value",
    "loss.contrastive.temperature": "softmax temperature (simcse, swav); -1 = the paper's",
    "loss.contrastive.dropout": "dropout rate that makes the two views (simcse, swav)",
    "loss.contrastive.prototypes": "SwAV prototypes; -1 = the paper's value",
    "loss.contrastive.sinkhorn_epsilon": "SwAV Sinkhorn entropy epsilon",
    "loss.contrastive.sinkhorn_iterations": "SwAV Sinkhorn iterations",
    **describe.section("optim", describe.OPTIM),
    "train.steps": "training steps (micro-batches; updates = steps / optim.grad_accum)",
    "train.batch_size": "pairs per step (divisible by the data-parallel size)",
    "train.log_every": "steps per logging window (metrics.jsonl, progress line)",
    "train.eval_every": "steps between held-out evaluations (and one at the end)",
    "train.save_every": "steps between checkpoints (and one at the end)",
    "train.keep_checkpoints": "checkpoints kept (the newest)",
    "train.workdir": "run folder: checkpoints, metrics, plots; an existing run resumes",
    "train.checkpoint_dir": "\"\" = <workdir>/checkpoints; several hosts need shared storage",
    "train.shared_prompt": "encode each prompt once per pair (packed rows)",
    "metarm.enabled": "MetaRM: take the BT gradient at theta' = theta + eta * grad J(theta)",
    "metarm.eta": "MetaRM inner step size",
    "metarm.first_order": "take the BT gradient at theta' but apply it to theta (no "
                          "second order)",
    "metarm.k": "responses per meta prompt",
    "metarm.prompts_per_step": "meta prompts per training step",
    "metarm.num_prompts": "training prompts the synthetic meta set samples for",
    "metarm.policy": "policy of the meta responses when metarm.responses is empty: "
                     "\"synthetic_best_of_n\" (shifted) or \"synthetic\" (the base policy)",
    "metarm.best_of": "synthetic_best_of_n: each meta response is the gold-best of this many "
                      "base-policy samples",
    "metarm.responses": "an .npz meta set (tokens/mask [P, k, T]); \"\" = sample from policy",
    "metarm.temperature": "sampling temperature of the meta responses",
    "metarm.top_k": "top-k of the meta responses; 0 = no limit",
}
