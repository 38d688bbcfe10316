"""Default config of ``rmjax dpo``: direct preference optimisation of the synthetic task's
base policy on the synthetic task's preference pairs, small enough for a laptop CPU.

The data section is ``rmjax train-rm``'s (synthetic pairs, or preference files tokenised
with a local tokenizer); the policy and the frozen reference start as the synthetic task's
base policy, or as ``policy.init_from`` (a Hugging Face folder or a .gguf file).
"""

import ml_collections

from rmjax.configs import describe, train_rm


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.data = train_rm.get_config().data
  c.data.synthetic.num_train_pairs = 2000
  c.data.synthetic.num_eval_pairs = 256
  # "" = the synthetic task's base policy (data.source must be "synthetic"); else a Hugging
  # Face folder or a .gguf file whose tokenizer the data was tokenised with, or an rmjax
  # rl, dpo or sft workdir (its trained policy: e.g. DPO after SFT).
  c.policy = ml_collections.ConfigDict(dict(init_from=""))
  # loss: dpo, cdpo (label_smoothing), ipo, simpo (beta 2, simpo_gamma), orpo (orpo_lambda)
  # or kto (the kto_* weights); rmjax/objectives/dpo.py. beta: the implicit reward's scale
  # (IPO's tau). reference: "model" (the frozen reference runs in every step) or
  # "precomputed" (its log-probs of every training pair computed once before training);
  # simpo and orpo use none.
  c.dpo = ml_collections.ConfigDict(dict(
      loss="dpo", beta=0.1, label_smoothing=0.1, simpo_gamma=1.0, orpo_lambda=0.1,
      kto_desirable_weight=1.0, kto_undesirable_weight=1.0, reference="model"))
  # Iterative (online) DPO, rmjax/rl/online_dpo.py: rounds > 0 replaces the data's pairs by
  # pairs of the policy's own samples, each round: prompts synthetic prompts x samples
  # responses, labelled by labeller "reward" (the members' mean of the train-rm run
  # `reward`) or "implicit" (the policy's own beta log pi/pi_ref, SPA); pairs
  # "best_worst" or "all"; then updates DPO steps on them. optimism: SELM's alpha (their
  # trainer's 0.001; 0 = off; dpo.loss "dpo" only): each pair's loss adds alpha * beta *
  # log(pi/pi_ref) of one of its prompt's samples of the round, drawn uniformly with the
  # round's key. reference: pi_ref of the DPO and optimism terms, "start" (the starting
  # policy) or "previous" (the policy each round starts from: SELM's; docs/algorithms.md
  # section 7).
  c.dpo.online = ml_collections.ConfigDict(dict(
      rounds=0, prompts=64, samples=4, pairs="best_worst", labeller="reward",
      reward="runs/train_rm", updates=4, temperature=1.0, optimism=0.0, reference="start"))
  # Iterative DPO's prompts: path "" = the synthetic task's; else a prompts file read as
  # `rmjax rl` reads it (rmjax/configs/rl.py), with policy.init_from a Hugging Face folder
  # (or .gguf file, or rl/dpo/sft run) and, for labeller "reward", a train-rm run on files
  # with the same tokenizer. No gold reward off the synthetic task.
  c.prompts = ml_collections.ConfigDict(dict(
      path="", format="", tokenizer="", max_len=64, max_response_len=64,
      skip_bad_rows=False))
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-4, warmup_steps=10, weight_decay=0.0, b1=0.9, b2=0.95, clip_norm=1.0,
      grad_accum=1))
  # eval_prompts > 0 (synthetic task): every eval also samples that many responses from the
  # policy and logs their gold reward and KL to the reference (the frontier's two axes).
  c.train = ml_collections.ConfigDict(dict(
      steps=200, batch_size=16, log_every=10, eval_every=50, save_every=50,
      keep_checkpoints=2, workdir="runs/dpo", checkpoint_dir="", eval_prompts=128))
  return c


FIELDS = {
    "seed": "seed of the data order and the evaluation samples",
    **describe.section("mesh", describe.MESH),
    **{k: v for k, v in train_rm.FIELDS.items() if k.startswith("data.")},
    "policy.init_from": "\"\" = the synthetic base policy; a Hugging Face folder, a .gguf "
                        "file or an rl, dpo or sft workdir",
    "dpo.loss": "dpo, cdpo, ipo, simpo, orpo or kto",
    "dpo.beta": "scale of the implicit reward beta * log(pi / pi_ref) (IPO's tau; SimPO's beta)",
    "dpo.label_smoothing": "cdpo: probability that a label is wrong",
    "dpo.simpo_gamma": "simpo: target reward margin",
    "dpo.orpo_lambda": "orpo: weight of the odds-ratio term beside the NLL",
    "dpo.kto_desirable_weight": "kto: weight of the chosen (desirable) term",
    "dpo.kto_undesirable_weight": "kto: weight of the rejected (undesirable) term",
    "dpo.reference": "\"model\" (run in every step) or \"precomputed\" (once, before training)",
    "dpo.online.rounds": "iterative DPO rounds on the policy's own samples; 0 = offline pairs",
    "dpo.online.prompts": "synthetic prompts sampled each round",
    "dpo.online.samples": "responses per prompt each round",
    "dpo.online.pairs": "\"best_worst\" per prompt, or \"all\" pairs of its samples",
    "dpo.online.labeller": "\"reward\" (dpo.online.reward) or \"implicit\" (the policy's own, SPA)",
    "dpo.online.reward": "the train-rm run that labels pairs (labeller \"reward\")",
    "dpo.online.updates": "DPO steps (minibatches of the round's pairs) per round",
    "dpo.online.temperature": "sampling temperature of the round's responses",
    "dpo.online.optimism": "SELM's alpha (0 = off; dpo.loss dpo): alpha * beta * log pi/pi_ref "
                           "of a sampled response",
    "dpo.online.reference": "pi_ref of each round's steps: \"start\" (the starting policy) or "
                            "\"previous\" (the policy the round starts from, SELM's)",
    "prompts.path": "iterative DPO: \"\" = the synthetic task's prompts; else a file of "
                    "prompt rows or pairs (needs policy.init_from)",
    "prompts.format": "format of prompts.path; \"\" = detected",
    "prompts.tokenizer": "\"\" = the policy's own, else the labelling reward model's",
    "prompts.max_len": "prompt tokens kept (its end)",
    "prompts.max_response_len": "tokens per sampled response on prompts.path",
    "prompts.skip_bad_rows": "drop malformed prompt rows (reported) instead of stopping",
    **describe.section("optim", describe.OPTIM),
    **describe.section("train", describe.POLICY_TRAIN),
}
