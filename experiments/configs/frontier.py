"""Config of ``experiments/frontier.py``: the reward-KL frontier of rmjax's policy
optimisers on the synthetic task against one shared proxy reward model.

Run: ``python experiments/frontier.py --config=experiments/configs/frontier.py``.
``rl``, ``dpo`` and ``sft`` hold overrides of ``rmjax/configs/rl.py``, ``dpo.py`` and
``sft.py`` by section (nested); every method of a seed uses that seed.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = "runs/frontier"
  c.seeds = (0, 1, 2)
  # Multiplies the RL and online-DPO prompts per round, the DPO/SFT steps and the proxy's training
  # steps (a GPU run: 4 or more). 1 = the CPU default.
  c.scale = 1
  c.methods = ("bon_distill", "ppo", "rloo", "grpo", "dr_grpo", "reinforce_pp", "dpo",
               "online_dpo")
  # KL(pi || pi_base) values (nats, k1 summed over a response) at which gold is compared.
  c.kls = (0.25, 0.5, 1.0, 1.5)
  c.smooth = 5  # RL: centred running mean over this many iterations before reading off
  c.resamples = 2000  # of the seeds-then-prompts bootstrap (experiments/trajectory_stats.py)
  # The proxy: rmjax train-rm's default reward model on the synthetic task's pairs, trained
  # once (seed 0) and shared by every method and seed.
  c.proxy = ml_collections.ConfigDict(dict(steps=600, seed=0))
  c.rl = ml_collections.ConfigDict(dict(
      rl=ml_collections.ConfigDict(dict(iterations=60, prompts=16, samples_per_prompt=4)),
      kl=ml_collections.ConfigDict(dict(coef=0.05)),
      # The PPO study's rates: this small policy moves within 60 iterations (warmup: the
      # first full-rate Adam steps would jump several nats of KL at once).
      optim=ml_collections.ConfigDict(dict(
          actor=ml_collections.ConfigDict(dict(learning_rate=5e-4, warmup_steps=10)),
          critic=ml_collections.ConfigDict(dict(learning_rate=1e-3))))))
  c.dpo = ml_collections.ConfigDict(dict(
      optim=ml_collections.ConfigDict(dict(learning_rate=3e-4)),
      train=ml_collections.ConfigDict(dict(steps=240, eval_every=30, eval_prompts=128))))
  # Iterative DPO: 30 rounds of 32 prompts x 4 own samples, best against worst by the proxy.
  c.online_dpo = ml_collections.ConfigDict(dict(
      dpo=ml_collections.ConfigDict(dict(online=ml_collections.ConfigDict(dict(
          rounds=30, prompts=32, samples=4, updates=2)))),
      optim=ml_collections.ConfigDict(dict(learning_rate=3e-4))))
  c.sft = ml_collections.ConfigDict(dict(
      data=ml_collections.ConfigDict(dict(best_of_n=ml_collections.ConfigDict(dict(
          prompts=1024, n=16)))),
      optim=ml_collections.ConfigDict(dict(learning_rate=3e-4)),
      train=ml_collections.ConfigDict(dict(steps=240, eval_every=30, eval_prompts=128))))
  return c
