"""``rmjax dpo``: response log-probs by hand, the precomputed reference equal to the live
one, learning on the synthetic task, a file with a Hugging Face policy, exact resume after
SIGKILL."""

import json
import os

import jax
import jax.numpy as jnp
import kill_resume
import numpy as np
import pytest

from rmjax.configs import dpo as dpo_config
from rmjax.rl import dpo
from rmjax.tasks import preference as synthetic


def tiny_config(workdir, steps=4, loss="dpo"):
  c = dpo_config.get_config()
  c.data.synthetic.update(num_train_pairs=64, num_eval_pairs=16)
  c.dpo.loss = loss
  c.train.update(steps=steps, batch_size=8, log_every=2, eval_every=steps, save_every=2,
                 eval_prompts=16, workdir=str(workdir))
  return c


def metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_sequence_logprobs_sum_the_response_tokens_only():
  task = synthetic.build_task(synthetic.SyntheticConfig())
  tokens = np.array([[1, 5, 6, 7, 8, 0], [1, 9, 4, 0, 0, 0]], np.int32)
  mask = tokens > 0
  mask[:, 0] = True
  prompt_len = np.array([2, 1], np.int32)
  got, count = dpo.sequence_logprobs(task.policy, jnp.asarray(tokens), jnp.asarray(mask),
                                     jnp.asarray(prompt_len))
  hidden, _ = task.policy(jnp.asarray(tokens), jnp.asarray(mask))
  logits = np.asarray(task.policy.logits(hidden), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = [sum(logp[0, t - 1, tokens[0, t]] for t in (2, 3, 4)),
          sum(logp[1, t - 1, tokens[1, t]] for t in (1, 2))]
  np.testing.assert_allclose(got, want, rtol=1e-4)
  np.testing.assert_array_equal(count, [3, 2])


def test_precomputed_reference_gives_the_live_reference_step(tmp_path):
  live = dpo.DPOTrainer(tiny_config(tmp_path / "a"))
  config = tiny_config(tmp_path / "b")
  config.dpo.reference = "precomputed"
  pre = dpo.DPOTrainer(config)
  assert pre.precomputed.shape == (64, 2)
  out = []
  for trainer in (live, pre):
    state = trainer.init_state()
    _, m = trainer.step_fn()(state, trainer.batch(0))
    out.append(jax.device_get(m))
  for key in ("loss", "chosen_reward", "rejected_reward"):
    np.testing.assert_allclose(out[1][key], out[0][key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_dpo_raises_the_gold_reward_of_policy_samples(tmp_path):
  c = dpo_config.get_config()
  c.train.update(steps=60, eval_every=60, save_every=60, workdir=str(tmp_path))
  result = dpo.train(c)
  ev = result["eval"]
  assert ev["gold"] > ev["gold_reference"] + 0.2, ev
  assert ev["kl"] > 0.05  # the policy moved
  assert result["metrics"]["reward_margin"] > 0


def test_bad_settings_say_what_is_wrong(tmp_path):
  c = tiny_config(tmp_path)
  c.dpo.loss = "rrhf"
  with pytest.raises(ValueError, match="dpo.loss='rrhf'"):
    dpo.DPOTrainer(c)
  c = tiny_config(tmp_path)
  c.dpo.reference = "cached"
  with pytest.raises(ValueError, match="dpo.reference='cached'"):
    dpo.DPOTrainer(c)
  c = tiny_config(tmp_path)
  c.data.source = "files"
  with pytest.raises(ValueError, match="set policy.init_from"):
    dpo.DPOTrainer(c)


def test_preference_file_with_a_hugging_face_policy(tmp_path):
  from test_ppo_files import WORDS, save_hf_policy

  save_hf_policy(tmp_path / "policy")
  rng = np.random.default_rng(0)
  text = lambda n: " ".join(rng.choice(WORDS, n))
  with open(tmp_path / "pairs.jsonl", "w") as f:
    for _ in range(24):
      f.write(json.dumps({"prompt": text(4), "chosen": "w1 w2 w3", "rejected": text(5)}) + "\n")
  c = tiny_config(tmp_path / "run", steps=6)
  c.data.source = "files"
  c.data.files.update(paths=(str(tmp_path / "pairs.jsonl"),), tokenizer=str(tmp_path / "policy"),
                      train_lines=(1, 17), eval_lines=(17, 25), seq_len=32, max_response_len=16,
                      data_dir=str(tmp_path / "data"))
  c.policy.init_from = str(tmp_path / "policy")
  c.optim.learning_rate = 1e-3
  result = dpo.train(c)
  rows = [r for r in metrics(tmp_path / "run") if r["split"] == "train"]
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert "gold" not in result["eval"]  # no synthetic task, no gold
  # the fixed chosen response becomes likelier than under the reference
  assert result["eval"]["chosen_reward"] > 0


@pytest.mark.slow
def test_sigkill_then_resume_continues_bit_identically(tmp_path):
  kill_resume.check(tmp_path, "from test_dpo import tiny_config\nfrom rmjax.rl import dpo\n"
                    "dpo.train(tiny_config(sys.argv[1], steps=6))\n",
                    os.path.dirname(__file__), kill_at=4, final=6, resumed="resumed from step 4")
