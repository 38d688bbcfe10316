"""``rmjax score``, ``rmjax eval-rm`` and best-of-n with an ``rmjax dpo`` run: its implicit
reward equals β·(log π − log π_ref) of the response tokens recomputed here by hand, and a
workdir that holds no such run is a one-line error naming it."""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rmjax import parallel
from rmjax.commands import eval_rm, score
from rmjax.configs import dpo as dpo_config
from rmjax.configs import eval_rm as eval_rm_config
from rmjax.configs import score as score_config
from rmjax.configs import sft as sft_config
from rmjax.data import schema
from rmjax.rl import best_of_n, build, dpo, sft
from rmjax.runtime.checkpoint import Checkpointer, provenance
from rmjax.tasks import preference as synthetic

BETA = 0.5


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
  """(workdir, synthetic config, implicit reward by hand: (tokens, mask, prompt_len) -> [B])
  of a two-step dpo run whose policy moved away from its reference."""
  workdir = tmp_path_factory.mktemp("dpo")
  c = dpo_config.get_config()
  c.data.synthetic.update(num_train_pairs=64, num_eval_pairs=16)
  c.dpo.beta = BETA
  c.optim.update(learning_rate=3e-3, warmup_steps=0)
  c.train.update(steps=2, batch_size=8, log_every=2, eval_every=2, save_every=2,
                 eval_prompts=0, workdir=str(workdir))
  dpo.train(c)
  task_cfg = synthetic.SyntheticConfig(**c.data.synthetic.to_dict())
  policy = build.trained_policy(workdir)
  reference = synthetic.build_task(task_cfg).policy

  def response_logp(model, tokens, mask, prompt_len):
    hidden, _ = model(jnp.asarray(tokens), jnp.asarray(mask))
    logits = np.asarray(model.logits(hidden), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return np.array([sum(logp[i, t - 1, tokens[i, t]] for t in range(p, int(m.sum())))
                     for i, (p, m) in enumerate(zip(prompt_len, mask))])

  def implicit(tokens, mask, prompt_len):
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    return BETA * (response_logp(policy, tokens, mask, prompt_len)
                   - response_logp(reference, tokens, mask, prompt_len))

  return workdir, task_cfg, implicit


def _eval_pairs(task_cfg):
  """The held-out pairs and their prompt + response token ids per side."""
  arrays = synthetic.make_split(task_cfg, "eval")
  rows = []
  for i, p in enumerate(arrays["prompt_len"]):
    seq = {side: arrays[f"{side}_tokens"][i][arrays[f"{side}_mask"][i]].tolist()
           for side in ("chosen", "rejected")}
    rows.append({"prompt": seq["chosen"][:p], "chosen": seq["chosen"][p:],
                 "rejected": seq["rejected"][p:]})
  return arrays, rows


def _sides(arrays):
  plen = arrays["prompt_len"]
  return [(arrays[f"{side}_tokens"], arrays[f"{side}_mask"], plen)
          for side in ("chosen", "rejected")]


def test_score_writes_the_implicit_reward_of_responses_and_pairs(dpo_run, tmp_path, capsys):
  workdir, task_cfg, implicit = dpo_run
  arrays, pairs = _eval_pairs(task_cfg)
  r_c, r_r = (implicit(*side) for side in _sides(arrays))
  assert np.ptp(np.concatenate([r_c, r_r])) > 1e-3  # the policy is not its reference
  with open(tmp_path / "in.jsonl", "w") as f:
    for i, pair in enumerate(pairs):
      row = pair if i % 2 else {"prompt": pair["prompt"], "response": pair["rejected"]}
      f.write(json.dumps({"id": i, **row}) + "\n")
  config = score_config.get_config()
  config.update(workdir=str(workdir), input=str(tmp_path / "in.jsonl"), batch_size=8)
  score.run(config)
  assert f"({len(pairs) // 2 * 3} sequences" in capsys.readouterr().out
  rows = [json.loads(line) for line in open(tmp_path / "in.scored.jsonl")]
  assert [r["id"] for r in rows] == list(range(len(pairs)))
  for i, row in enumerate(rows):
    assert not any(k.startswith("member_rewards") for k in row)  # one member, as an RM's
    if i % 2:
      np.testing.assert_allclose([row["reward_chosen"], row["reward_rejected"]],
                                 [r_c[i], r_r[i]], atol=1e-4)
    else:
      np.testing.assert_allclose(row["reward"], r_r[i], atol=1e-4)


def test_eval_rm_accuracy_is_that_of_the_implicit_margin(dpo_run, tmp_path, capsys):
  workdir, task_cfg, implicit = dpo_run
  arrays, pairs = _eval_pairs(task_cfg)
  head = 8
  with open(tmp_path / "head.jsonl", "w") as f:
    f.writelines(json.dumps(p) + "\n" for p in pairs[:head])
  margin = np.subtract(*(implicit(*side) for side in _sides(arrays)))
  accuracy = lambda m: float(np.mean(np.where(m > 0, 1.0, np.where(m == 0, 0.5, 0.0))))
  config = eval_rm_config.get_config()
  config.update(workdir=str(workdir), sets=f"synthetic,head={tmp_path / 'head.jsonl'}",
                name="dpo", batch_size=8)
  out = eval_rm.run(config)
  held_out, file = out["sets"]
  assert (held_out["pairs"], file["pairs"]) == (len(pairs), head)
  np.testing.assert_allclose(held_out["accuracy"], accuracy(margin), atol=1e-6)
  np.testing.assert_allclose(file["accuracy"], accuracy(margin[:head]), atol=1e-6)
  np.testing.assert_allclose(held_out["margin"], margin.mean(), atol=1e-4)
  # the fields and table of a one-member reward model
  assert set(held_out) == {"subset", "pairs", "accuracy", "margin", "ece",
                           "length_correlation", "gold_agreement", "path"}
  printed = capsys.readouterr().out
  assert f"step 2, DPO-family implicit reward, loss dpo, beta {BETA:g})" in printed
  assert f"| head | {head} | {accuracy(margin[:head]):.4f} |" in printed
  assert json.load(open(workdir / "eval_dpo.json"))["step"] == 2


def test_rejection_sampling_by_a_dpo_run_keeps_the_best_implicit_reward(dpo_run,
                                                                        monkeypatch):
  workdir, task_cfg, implicit = dpo_run
  seen = []
  sample = best_of_n.best_of_n_scores
  monkeypatch.setattr(best_of_n, "best_of_n_scores",
                      lambda *a, **k: seen.append(sample(*a, **k)) or seen[-1])
  cfg = sft_config.get_config().data.best_of_n
  cfg.update(prompts=8, n=3, reward=str(workdir))
  task = synthetic.build_task(task_cfg)
  mesh = parallel.make_mesh(parallel.MeshConfig(data=-1, fsdp=1, tensor=1))
  rows = sft.best_of_n_rows(task, task.policy, cfg, 0, mesh)
  (out,) = seen
  plen = np.repeat(rows["prompt_len"], 3)
  want = implicit(out["tokens"].reshape(24, -1), out["mask"].reshape(24, -1), plen)
  np.testing.assert_allclose(out["score"].ravel(), want, atol=1e-4)
  best = np.argmax(want.reshape(8, 3), axis=1)
  np.testing.assert_array_equal(rows["tokens"], out["tokens"][np.arange(8), best])


def _checkpoint(workdir, config):
  with Checkpointer(workdir / "checkpoints", provenance=provenance(config)) as ckpt:
    ckpt.save(1, {"params": {"w": np.zeros(2, np.float32)}}, force=True)
    ckpt.wait()


def test_a_workdir_without_a_dpo_or_train_rm_run_is_one_line_naming_it(dpo_run, tmp_path):
  (tmp_path / "in.jsonl").write_text(json.dumps({"response": [3, 4]}) + "\n")
  config = score_config.get_config()
  config.input = str(tmp_path / "in.jsonl")
  config.workdir = str(dpo_run[0])
  with pytest.raises(schema.DataError, match=r"in\.jsonl:1: field 'prompt' is empty or "
                                             r"missing, but .* is a dpo run"):
    score.run(config)
  empty = tmp_path / "unsaved_dpo"
  (empty / "checkpoints").mkdir(parents=True)
  sft_run, other = tmp_path / "sft_run", tmp_path / "other"
  _checkpoint(sft_run, sft_config.get_config())
  _checkpoint(other, ml_collections.ConfigDict(dict(seed=0)))
  evaluate = eval_rm_config.get_config()
  for workdir, error, what in [(empty, FileNotFoundError, "no committed checkpoint"),
                               (sft_run, ValueError, "an rmjax sft run"),
                               (other, ValueError, "no rmjax train-rm or dpo run")]:
    for command, cfg in ((score, config), (eval_rm, evaluate)):
      cfg.workdir = str(workdir)
      with pytest.raises(error, match=what) as caught:
        command.run(cfg)
      assert str(caught.value).startswith(f"{workdir}: ") and "\n" not in str(caught.value)
