"""What a policy's own samples score on the synthetic task: the gold reward and the KL to
the reference, the two axes of the reward–KL frontier. Shared by the programs that train a
policy offline (``rmjax dpo``, ``rmjax sft``) and the experiments that read a trained
policy's samples."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rmjax import parallel
from rmjax.models.sampler import SamplingConfig, generate
from rmjax.objectives import kl as kl_lib
from rmjax.parallel.sharding import to_host
from rmjax.rl.best_of_n import right_padded
from rmjax.rl.ppo_step import response_logprobs
from rmjax.runtime import loop
from rmjax.tasks import preference as synthetic

EVAL_STREAM = 2**32 - 3  # the key stream of the evaluation's policy samples


def policy_samples(task, graphdef, params, reference, seed: int, n: int, mesh) -> dict:
  """Per sample of ``n`` samples of ``params`` (temperature 1) from prompts and keys fixed by
  ``seed``, so every evaluation of a run, and of its reference, reads the same prompts:
  right-padded "tokens", "mask" [n, S], "prompt_len" [n], the gold "total" [n] and the k1
  "kl" [n] to ``reference`` summed over each response (numpy)."""
  key = jax.random.fold_in(jax.random.key(seed), EVAL_STREAM)
  prompts, prompt_len = task.sample_prompts(jax.random.fold_in(key, 0), n)
  mask = np.arange(prompts.shape[1])[None] < prompt_len[:, None]
  sampling = SamplingConfig(max_new_tokens=task.cfg.max_response_len, eos_id=synthetic.EOS,
                            pad_id=synthetic.PAD)
  batch = parallel.shard_batch({"tokens": prompts, "mask": mask}, mesh)
  out = generate(nnx.merge(graphdef, params), batch["tokens"], batch["mask"],
                 jax.random.fold_in(key, 1), sampling)
  seq, seq_mask = out.sequences()
  ref_logp, _ = response_logprobs(nnx.merge(graphdef, reference), seq, seq_mask,
                                  prompts.shape[1])
  kl = kl_lib.sequence_kl(out.logprobs, ref_logp, out.mask, "k1")
  tokens, tmask = to_host(right_padded(seq, seq_mask))
  gold = task.gold_reward(tokens, tmask, jnp.asarray(prompt_len))
  return {"tokens": np.asarray(tokens), "mask": np.asarray(tmask), "prompt_len": prompt_len,
          "total": np.asarray(gold["total"]), "kl": np.asarray(to_host(kl))}


def per_prompt(prompts: int, **values) -> dict[str, np.ndarray]:
  """{name: [prompts] float64} each prompt's mean of per-sample ``values`` (arrays [B] whose
  rows hold a prompt's samples adjacently, as the rollouts lay them out): the per-prompt
  values a program logs under ``loop.ITEMS``."""
  return {k: np.asarray(to_host(v), np.float64).reshape(prompts, -1).mean(axis=1)
          for k, v in values.items()}


class GoldProbe:
  """The gold reward and KL of a policy's samples on the evaluation's fixed prompts
  (``policy_samples``), beside the reference's own gold on the same prompts and keys
  (sampled once, on first use): what ``rmjax dpo`` and ``rmjax sft`` log at every
  evaluation on the synthetic task."""

  def __init__(self, task, graphdef, reference, seed: int, n: int, mesh):
    self.args = (task, graphdef)
    self.reference, self.seed, self.n, self.mesh = reference, seed, n, mesh
    self._reference_gold = None

  def __call__(self, params) -> dict:
    """{"gold", "kl", "gold_reference": means over the prompts; ``loop.ITEMS``: the
    per-prompt "gold", "kl" and "gold_reference" (one sample per prompt)}."""
    sample = lambda p: policy_samples(*self.args, p, self.reference, self.seed, self.n,
                                      self.mesh)
    if self._reference_gold is None:
      self._reference_gold = sample(self.reference)["total"]
    out = sample(params)
    return {"gold": float(np.mean(out["total"])), "kl": float(np.mean(out["kl"])),
            "gold_reference": float(np.mean(self._reference_gold)),
            loop.ITEMS: per_prompt(self.n, gold=out["total"], kl=out["kl"],
                                   gold_reference=self._reference_gold)}
