"""``rmjax sft``: learning the synthetic task's chosen responses, rejection sampling that
selects by the reward, and a {"prompt", "response"} file with a Hugging Face policy."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from rmjax import parallel
from rmjax.configs import sft as sft_config
from rmjax.rl import sft


def tiny_config(workdir, steps=40):
  c = sft_config.get_config()
  c.data.synthetic.update(num_train_pairs=128, num_eval_pairs=32)
  c.train.update(steps=steps, batch_size=16, log_every=10, eval_every=steps, save_every=steps,
                 eval_prompts=16, workdir=str(workdir))
  return c


def test_sft_fits_its_rows_and_moves_away_from_the_reference(tmp_path):
  """On the gold-best of 8 samples (rows the base policy finds unlikely) the response loss
  of the training rows falls; the starting evaluation is the reference itself (KL 0)."""
  config = tiny_config(tmp_path)
  config.data.update(source="best_of_n")
  config.data.best_of_n.update(prompts=64, n=8, reward="gold")
  trainer = sft.SFTTrainer(config)
  trainer.eval_rows = trainer.train_rows
  state = trainer.init_state()
  start = trainer.evaluate(state)
  step = trainer.step_fn()
  for i in range(40):
    state, _ = step(state, parallel.shard_batch(trainer.source.batch(i), trainer.mesh))
  end = trainer.evaluate(state)
  assert end["response_loss"] < start["response_loss"] - 0.05, (start, end)
  assert start["kl"] == pytest.approx(0.0, abs=1e-4)
  assert end["kl"] > 0.0


def test_rejection_sampling_keeps_the_best_of_n_by_the_reward(tmp_path):
  golds = {}
  for n in (1, 8):
    config = tiny_config(tmp_path)
    config.data.update(source="best_of_n")
    config.data.best_of_n.update(prompts=64, n=n, reward="gold")
    trainer = sft.SFTTrainer(config)
    rows = trainer.train_rows
    assert rows["tokens"].shape[0] == 64
    golds[n] = float(np.mean(trainer.task.gold_reward(
        rows["tokens"], rows["mask"], jnp.asarray(rows["prompt_len"]))["total"]))
  assert golds[8] > golds[1] + 1.0, golds


def test_bad_settings_say_what_is_wrong(tmp_path):
  config = tiny_config(tmp_path)
  config.data.source = "web"
  with pytest.raises(ValueError, match="data.source='web'"):
    sft.SFTTrainer(config)
  config = tiny_config(tmp_path)
  config.data.source = "files"
  with pytest.raises(ValueError, match="needs policy.init_from"):
    sft.SFTTrainer(config)


def test_prompt_response_file_with_a_hugging_face_policy(tmp_path):
  from test_ppo_files import WORDS, save_hf_policy

  save_hf_policy(tmp_path / "policy")
  rng = np.random.default_rng(0)
  with open(tmp_path / "rows.jsonl", "w") as f:
    for _ in range(24):
      f.write(json.dumps({"prompt": " ".join(rng.choice(WORDS, 4)),
                          "response": "w1 w2 w3"}) + "\n")
  c = tiny_config(tmp_path / "run", steps=20)
  c.data.source = "files"
  c.data.files.update(paths=(str(tmp_path / "rows.jsonl"),), tokenizer=str(tmp_path / "policy"),
                      train_lines=(1, 17), eval_lines=(17, 25), seq_len=32, max_response_len=16)
  c.policy.init_from = str(tmp_path / "policy")
  c.optim.learning_rate = 3e-3
  trainer = sft.SFTTrainer(c)
  assert trainer.train_rows["tokens"].shape[0] == 16 and trainer.task is None
  start = trainer.evaluate(trainer.init_state())["response_loss"]
  result = sft.train(c)
  assert "gold" not in result["eval"]
  # the one fixed response is being learnt: its loss falls well below the random start's
  assert result["eval"]["response_loss"] < start - 1.0, (start, result["eval"])
