"""Default config of ``rmjax rl``: PPO-max (or another ``rl.algorithm``) against a reward
model trained by ``rmjax train-rm`` on the synthetic task, small enough for a laptop CPU.

The policy and the frozen reference start as the synthetic task's base policy (the task of
the first reward model's run); the critic starts from that reward model (its backbone,
the value head from its first reward head). Run ``rmjax train-rm`` first.
"""

import ml_collections

from rmjax.configs import describe


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # workdirs: one or more train-rm runs (each a model or an ensemble). Score pipeline
  # (algorithms.md §5): each run's members -> objective (mean, wco, uwo, ...) -> transform
  # ("none": the sum over runs; "lsc": log sigmoid(r - r_ref(x)) summed over runs, i.e. the
  # AND-combination, r_ref the per-prompt quantile of lsc_samples reference-policy samples)
  # -> running normalisation -> clip (0 = none). Before the objective, member_norm scales
  # every member to mean 0, std 1 on norm_batches rollout-sized batches of initial-policy
  # samples (Coste et al.; the statistics are checkpointed). One parameter per objective:
  # uwo_lam (Coste et al.'s PPO value 0.1; 0.5 was their best-of-n value), brme_lam (open
  # in Yan et al.; 0.5 is neutral). rules: rule rewards after the runs, each a source of
  # its own scoring a response against its prompt's reference in prompts.path ("bleu",
  # "exact_match"; rmjax/rl/rule_rewards.py); weights: one per source (runs, then rules)
  # in transform "none"'s sum, () = all 1. thresholds (constrained RLHF, Moskovitz et al.):
  # one per source, the objective score (after member normalisation) past which it stops
  # tracking quality; each source's weight sigma(nu) is learnt by gradient descent on
  # sum_i sigma(nu_i) (G_i - theta_i) at constraint_lr; () = off. calibration "ppo_c"
  # (Leng et al.): r + w (r - r_bar)(c - 0.5) from the confidence c each response states
  # (the synthetic task's), r_bar the EMA (weight calibration_alpha) of earlier batches.
  c.reward = ml_collections.ConfigDict(dict(
      workdirs=("runs/train_rm",), objective="mean", uwo_lam=0.1, brme_lam=0.5,
      member_norm=True, norm_batches=8, transform="none", rules=(), weights=(),
      thresholds=(), constraint_lr=0.1,
      lsc_quantile=0.85, lsc_samples=8, calibration="none", calibration_w=2.0,
      calibration_alpha=0.1, normalize=True, clip=0.8))
  # The policy: "" = the synthetic task's base policy (the task of the reward models'
  # runs); or a Hugging Face folder, a .gguf file, or an rmjax rl workdir (its actor).
  # eos_id: the id that ends a response (-1: the tokenizer's EOS).
  c.policy = ml_collections.ConfigDict(dict(init_from="", eos_id=-1))
  # Prompts: path "" = the synthetic task's; else a file of {"prompt": text or token ids}
  # rows (JSONL, JSON list, Parquet) or any preference format of rmjax.data.readers
  # (format "" = detected). tokenizer "" = the policy's own, else the reward models'.
  # Prompts keep their last max_len tokens; max_response_len applies when
  # rl.max_new_tokens is 0.
  c.prompts = ml_collections.ConfigDict(dict(
      path="", format="", tokenizer="", max_len=64, max_response_len=64,
      skip_bad_rows=False, reference_field="reference"))
  # Evaluation hook: log the synthetic task's gold reward of every rollout (never optimised).
  c.evaluate = ml_collections.ConfigDict(dict(gold=True))
  # LoRA (rmjax/models/lora.py) on the actor and on the critic: lora_rank > 0 freezes that
  # network's backbone (the actor's LM head too) and trains low-rank adapters (scale
  # lora_alpha / lora_rank) on lora_targets (any of qkv, o, gate_up, down), and the
  # critic's value head; 0 trains everything. The reference stays the policy it started as.
  lora = dict(lora_rank=0, lora_alpha=16.0, lora_targets="qkv,o,gate_up,down")
  c.actor = ml_collections.ConfigDict(lora)
  c.critic = ml_collections.ConfigDict(dict(init="reward_model", **lora))  # or "policy"
  # algorithm: ppo (GAE, critic), rloo, grpo, dr_grpo or reinforce_pp (critic-free;
  # rmjax/rl/algorithms.py has each one's advantages, loss reduction and KL placement).
  # loss_aggregation "" and kl_estimator "" take the algorithm's (token_mean /
  # sequence_mean / constant; k1 in the reward, k3 in the loss). group_eps: GRPO's std floor.
  c.rl = ml_collections.ConfigDict(dict(
      algorithm="ppo", loss_aggregation="", group_eps=1e-4,
      iterations=40, prompts=8, samples_per_prompt=4,
      max_new_tokens=0,  # 0 = the task's max_response_len
      temperature=1.0, top_k=0, top_p=1.0, epochs=1, minibatches=1, clip_eps=0.2,
      value_clip=0.2, gamma=1.0, lam=0.95, whiten=True, advantage_clip=0.0,
      kl_estimator="", entropy_coef=0.0,
      # PPO-ptx: ptx_coef x the LM loss on reference-policy samples (ptx_sequences of
      # them, drawn once), one minibatch of them beside every PPO minibatch; 0 = off.
      ptx_coef=0.0, ptx_sequences=256))
  # Fixed beta = coef, or Ziegler et al.'s adaptive controller (coef is its start).
  # placement: "reward" (-beta KL in the reward), "loss" (+beta KL in the loss, GRPO's);
  # "" = the algorithm's.
  c.kl = ml_collections.ConfigDict(dict(adaptive=False, coef=0.05, target=6.0, horizon=10000,
                                        placement=""))
  optim = dict(warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.95, clip_norm=1.0, grad_accum=1)
  c.optim = ml_collections.ConfigDict(dict(
      actor=ml_collections.ConfigDict(dict(learning_rate=2e-5, **optim)),
      critic=ml_collections.ConfigDict(dict(learning_rate=1e-4, **optim))))
  c.train = ml_collections.ConfigDict(dict(
      workdir="runs/rl", log_every=5, save_every=10, keep_checkpoints=2,
      checkpoint_dir=""))  # "" = <workdir>/checkpoints; multi-host: shared storage (gs://...)
  return c


FIELDS = {
    "seed": "seed of the prompts, sampling and minibatch order",
    **describe.section("mesh", describe.MESH),
    "reward.workdirs": "train-rm runs (each a model or an ensemble) whose scores are combined",
    "reward.objective": "how a run's members combine: mean, wco, uwo, ...",
    "reward.uwo_lam": "UWO's lambda: weight of the members' variance",
    "reward.brme_lam": "BRME's lambda",
    "reward.member_norm": "scale every member to mean 0, std 1 on initial-policy samples first",
    "reward.norm_batches": "member_norm: rollout-sized batches of samples for the statistics",
    "reward.transform": "\"none\" (sum over runs) or \"lsc\" (sum of log sigmoid(r - r_ref))",
    "reward.rules": "rule rewards against each prompt's reference: bleu, exact_match",
    "reward.weights": "weight of each source (runs, then rules) in the sum; () = all 1",
    "reward.thresholds": "constrained RLHF: each source's threshold; () = off",
    "reward.constraint_lr": "constrained RLHF: learning rate of the Lagrange multipliers",
    "reward.lsc_quantile": "lsc: quantile of the reference samples' rewards that is r_ref",
    "reward.lsc_samples": "lsc: reference-policy samples per prompt for r_ref",
    "reward.calibration": "\"ppo_c\": PPO-C's calibrated reward from the stated confidence; "
                          "\"none\" = off",
    "reward.calibration_w": "PPO-C's weight w of (r - r_bar)(c - 0.5)",
    "reward.calibration_alpha": "PPO-C's EMA weight of each batch's mean score",
    "reward.normalize": "normalise scores by running mean and std",
    "reward.clip": "clip scores to [-clip, clip]; 0 = no clipping",
    "policy.init_from": "\"\" = the synthetic base policy; a Hugging Face folder, a .gguf "
                        "file or an rl workdir",
    "policy.eos_id": "the id that ends a response; -1 = the tokenizer's EOS",
    "prompts.path": "\"\" = the synthetic task's prompts; else a file of prompt rows or pairs",
    "prompts.format": "format of prompts.path; \"\" = detected",
    "prompts.tokenizer": "\"\" = the policy's own, else the reward models'",
    "prompts.max_len": "prompt tokens kept (its end)",
    "prompts.max_response_len": "response tokens when rl.max_new_tokens is 0",
    "prompts.reference_field": "the field of prompts.path rows the rule rewards compare with",
    "prompts.skip_bad_rows": "drop malformed prompt rows (reported) instead of stopping",
    "evaluate.gold": "log the synthetic task's gold reward of every rollout (never optimised)",
    **describe.section("actor", describe.LORA),
    "critic.init": "critic start: \"reward_model\" (the first run's) or \"policy\"",
    **describe.section("critic", describe.LORA),
    "rl.algorithm": "ppo, rloo, grpo, dr_grpo or reinforce_pp",
    "rl.loss_aggregation": "token_mean, sequence_mean or constant; \"\" = the algorithm's",
    "rl.group_eps": "grpo: added to each group's reward std",
    "rl.iterations": "iterations (rollout, then updates)",
    "rl.prompts": "prompts per iteration",
    "rl.samples_per_prompt": "responses sampled per prompt",
    "rl.max_new_tokens": "tokens per response; 0 = the task's max_response_len",
    "rl.temperature": "sampling temperature of the rollouts",
    "rl.top_k": "sample among the k most likely tokens; 0 = no limit",
    "rl.top_p": "nucleus sampling probability mass; 1 = no limit",
    "rl.epochs": "passes over each iteration's episodes",
    "rl.minibatches": "minibatches per epoch (divides the episodes)",
    "rl.clip_eps": "PPO ratio clip epsilon",
    "rl.value_clip": "clip of the value update around the old values",
    "rl.gamma": "discount of GAE",
    "rl.lam": "GAE lambda",
    "rl.whiten": "whiten advantages over the batch",
    "rl.advantage_clip": "clip whitened advantages to [-x, x]; 0 = no clipping",
    "rl.kl_estimator": "KL estimator of the penalty: k1, k2, k3; \"\" = k1 in the reward, "
                       "k3 in the loss",
    "rl.entropy_coef": "weight of the entropy bonus",
    "rl.ptx_coef": "PPO-ptx: weight of the LM loss on reference-policy samples; 0 = off",
    "rl.ptx_sequences": "PPO-ptx: reference-policy samples drawn once for that loss",
    "kl.adaptive": "adapt beta with Ziegler et al.'s controller (else fixed beta = coef)",
    "kl.coef": "KL penalty beta (the adaptive controller's start)",
    "kl.target": "adaptive controller: target KL",
    "kl.horizon": "adaptive controller: horizon",
    "kl.placement": "\"reward\" or \"loss\"; \"\" = the algorithm's",
    **describe.section("optim.actor", describe.OPTIM),
    **describe.section("optim.critic", describe.OPTIM),
    "train.workdir": "run folder: checkpoints, metrics; an existing run resumes",
    "train.log_every": "iterations per logging window",
    "train.save_every": "iterations between checkpoints (and one at the end)",
    "train.keep_checkpoints": "checkpoints kept (the newest)",
    "train.checkpoint_dir": "\"\" = <workdir>/checkpoints; several hosts need shared storage",
}
