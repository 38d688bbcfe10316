"""``rmjax rl`` off the synthetic task: a Hugging Face policy saved by transformers, prompts
from a JSONL file, a reward model trained by ``rmjax train-rm`` on preference files with
the same tokenizer; and every reward workdir checked against the policy, not only the
first."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from orbax.checkpoint import PyTreeCheckpointer

from rmjax.configs import rl as ppo_config
from rmjax.configs import train_rm
from rmjax.models import gguf_io
from rmjax.models.transformer import Transformer
from rmjax.rl import build
from rmjax.rl import trainer as ppo_trainer
from rmjax.rm import load as load_rm
from rmjax.rm import trainer as rm_trainer
from rmjax.runtime.checkpoint import Checkpointer, provenance

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")

WORDS = [f"w{i}" for i in range(28)]
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


def _tokenizer(folder, words):
  vocab = {w: i for i, w in enumerate(SPECIAL + words)}
  core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>",
                                             eos_token="</s>", pad_token="<pad>",
                                             unk_token="<unk>")
  tok.save_pretrained(folder)
  return tok


def save_hf_policy(folder):
  """A tiny random Hugging Face llama saved in ``folder`` with the WordLevel tokenizer of
  WORDS (BOS 1, EOS 2, PAD 3); returns the tokenizer."""
  tok = _tokenizer(folder, WORDS)
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
      bos_token_id=1, eos_token_id=2, pad_token_id=3)).save_pretrained(folder,
                                                                   safe_serialization=True)
  return tok


def _rm_config(workdir, tokenizer, pairs):
  c = train_rm.get_config()
  c.data.source = "files"
  c.data.files.update(paths=(str(pairs),), tokenizer=str(tokenizer), train_lines=(1, 25),
                      eval_lines=(25, 33), seq_len=32, max_response_len=16,
                      data_dir=str(workdir / "data"))
  c.model.update(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, max_seq_len=64)
  c.optim.warmup_steps = 1
  c.train.update(steps=2, batch_size=8, log_every=1, eval_every=2, save_every=2,
                 workdir=str(workdir))
  return c


def _fake_run(workdir, config, vocab):
  """A train-rm checkpoint of random parameters for ``config`` (nothing trained)."""
  cfg = load_rm.model_config_of(config.model, vocab)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  nnx.replace_by_pure_dict(state, jax.tree.map(
      lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype),
      nnx.to_pure_dict(state)))
  checkpointer = Checkpointer(workdir / "checkpoints", provenance=provenance(config))
  checkpointer.save(1, {"params": state}, force=True)
  checkpointer.wait()
  checkpointer.close()
  return workdir


def build_world(root, prompt_words=(3, 5, 7, 4)):
  """In ``root``: a tokenizer ("tok"), a tiny random HF llama saved with it ("policy"),
  preference pairs, a prompts file (one prompt of each length in ``prompt_words``) and a
  reward model ("rm") trained on the pairs with the same tokenizer."""
  _tokenizer(root / "tok", WORDS)
  save_hf_policy(root / "policy")  # the policy's own tokenizer: the same one
  rng = np.random.default_rng(0)
  text = lambda n: " ".join(rng.choice(WORDS, n))
  with open(root / "pairs.jsonl", "w") as f:
    for _ in range(32):
      f.write(json.dumps({"prompt": text(4), "chosen": text(3), "rejected": text(5)}) + "\n")
  with open(root / "prompts.jsonl", "w") as f:
    for n in prompt_words:
      f.write(json.dumps({"prompt": text(n)}) + "\n")
  rm_trainer.train(_rm_config(root / "rm", root / "tok", root / "pairs.jsonl"))
  return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return build_world(tmp_path_factory.mktemp("files_world"))


def _ppo_config(world, workdir, *rm_dirs):
  c = ppo_config.get_config()
  c.reward.update(workdirs=tuple(str(d) for d in rm_dirs), objective="mean", norm_batches=2)
  c.policy.init_from = str(world / "policy")
  c.prompts.update(path=str(world / "prompts.jsonl"), max_len=16)
  c.rl.update(iterations=2, prompts=4, samples_per_prompt=2, max_new_tokens=8)
  c.train.update(workdir=str(workdir), log_every=1, save_every=2)
  return c


def test_a_critic_free_algorithm_on_file_prompts_with_an_hf_policy(world, tmp_path):
  config = _ppo_config(world, tmp_path / "grpo", world / "rm")
  config.rl.algorithm = "grpo"
  ppo_trainer.train(config)
  rows = [json.loads(line) for line in open(tmp_path / "grpo" / "metrics.jsonl")]
  rows = [r for r in rows if r.get("split") == "train"]
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    assert np.isfinite(r["kl_loss"]) and np.isfinite(r["policy_loss"]) and "value_loss" not in r
  saved = PyTreeCheckpointer().restore(str(tmp_path / "grpo" / "checkpoints" / "2" / "state"))
  assert "critic" not in saved and "actor" in saved


def test_rule_rewards_alone_on_prompts_with_references(world, tmp_path):
  """GRPO with exact match and BLEU against each prompt's reference: no reward model."""
  rows = [{"prompt": f"w{i} w{i + 1}", "reference": f"w{i + 2} w{i + 3}"} for i in range(6)]
  (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = _ppo_config(world, tmp_path / "rules")
  config.rl.algorithm = "grpo"
  config.reward.update(workdirs=(), rules=("exact_match", "bleu"), weights=(1.0, 0.5),
                       member_norm=False, normalize=False, clip=0.0)
  config.prompts.path = str(tmp_path / "qa.jsonl")
  trainer, _ = ppo_trainer.build_run(config)
  assert [s.name for s in trainer.sources] == ["rule exact_match", "rule bleu"]
  ppo_trainer.train(config)
  rows = [json.loads(line) for line in open(tmp_path / "rules" / "metrics.jsonl")]
  rows = [r for r in rows if r.get("split") == "train"]
  for r in rows:
    assert 0.0 <= r["proxy_0"] <= 1.0 and 0.0 <= r["proxy_1"] <= 1.0
    assert r["score"] == pytest.approx(r["proxy_0"] + 0.5 * r["proxy_1"], abs=1e-5)


def test_hf_policy_file_prompts_and_a_files_reward_model_end_to_end(world, tmp_path):
  result = ppo_trainer.train(_ppo_config(world, tmp_path / "ppo", world / "rm"))
  rows = [json.loads(line) for line in open(tmp_path / "ppo" / "metrics.jsonl")]
  rows = [r for r in rows if r.get("split") == "train"]
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    assert np.isfinite(r["score"]) and np.isfinite(r["policy_loss"]) and r["kl"] >= -1e-4
    assert "gold" not in r  # no gold reward off the synthetic task
    assert 1 <= r["response_length"] <= 8
  assert rows[0]["kl_k2"] == pytest.approx(0.0, abs=1e-5)  # pi = pi_ref at first
  (stats,) = result["member_stats"]
  assert stats["mu"].shape == stats["sigma"].shape == (1,) and stats["sigma"][0] > 0
  assert stats["mu"][0] != 0.0 and stats["sigma"][0] != 1.0  # measured, not placeholders
  # The rollout task: the file's prompts through the policy's tokenizer, BOS first.
  config = _ppo_config(world, tmp_path / "unused", world / "rm")
  sources = build.load_reward_sources(config.reward.workdirs, None)
  task = build.rollout_task(config, sources)
  tokens, lengths = task.sample_prompts(jax.random.key(0), 16)
  prompts = [json.loads(line)["prompt"] for line in open(world / "prompts.jsonl")]
  tok = transformers.AutoTokenizer.from_pretrained(world / "tok")
  for row, n in zip(tokens, lengths):  # each row is one of the file's prompts, right-padded
    assert tok.decode(row[:n].tolist()) in prompts and np.all(row[n:] == 3)
  assert task.eos_id == 2 and task.pad_id == 3 and task.evaluate is None
  assert task.tokenizer == sources[0].tokenizer  # same tokenizer, found in two folders
  # An rmjax rl workdir as the policy: its actor, on the architecture of its own policy.
  again = _ppo_config(world, tmp_path / "unused", world / "rm")
  again.policy.init_from = str(tmp_path / "ppo")
  actor = nnx.to_pure_dict(nnx.state(build.policy_model(again, [])))
  saved = PyTreeCheckpointer().restore(str(tmp_path / "ppo" / "checkpoints" / "2" / "state"))
  flat = lambda tree: {jax.tree_util.keystr(p).replace("'", "").replace("[value]", ""):
                       np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  saved_actor = flat(saved["actor"])
  assert set(flat(actor)) == set(saved_actor)
  for name, value in flat(actor).items():
    np.testing.assert_array_equal(value, saved_actor[name], err_msg=name)


def test_prompts_from_a_preference_file_and_bad_prompt_files(world, tmp_path):
  pairs = [json.loads(line) for line in open(world / "pairs.jsonl")]
  prompts = build._prompt_rows(str(world / "pairs.jsonl"), "", False)
  assert prompts == list(dict.fromkeys(p["prompt"] for p in pairs))  # once each, in order
  (tmp_path / "bad.jsonl").write_text('{"prompt": "w1 w2"}\n{"prompt": ""}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'prompt' must be non-empty"):
    build._prompt_rows(str(tmp_path / "bad.jsonl"), "", False)
  assert build._prompt_rows(str(tmp_path / "bad.jsonl"), "", True) == ["w1 w2"]
  with pytest.raises(ValueError, match="text prompts but there is no tokenizer"):
    build.encode_prompts(["w1 w2"], None, 8)
  tokens, lengths = build.encode_prompts([[5, 6, 7, 8, 9, 10], [4]], None, 4, pad_id=3)
  np.testing.assert_array_equal(tokens, [[7, 8, 9, 10], [4, 3, 3, 3]])  # the end is kept
  np.testing.assert_array_equal(lengths, [4, 1])
  config = _ppo_config(world, tmp_path / "ppo", world / "rm")
  config.prompts.path = str(tmp_path / "missing.jsonl")
  with pytest.raises(FileNotFoundError, match="prompts.path=.*missing.jsonl: no such file"):
    ppo_trainer.train(config)


def test_every_reward_workdir_is_checked_and_the_second_is_named(world, tmp_path):
  other = _tokenizer(tmp_path / "tok_b", WORDS + ["extra1", "extra2"])
  config_b = _rm_config(tmp_path / "rm_b", tmp_path / "tok_b", world / "pairs.jsonl")
  rm_b = _fake_run(tmp_path / "rm_b", config_b, len(other))
  with pytest.raises(ValueError, match=rf"reward model {rm_b}: its vocab_size 34 differs "
                                       r"from policy.init_from=.*'s 32"):
    ppo_trainer.train(_ppo_config(world, tmp_path / "ppo", world / "rm", rm_b))
  # Same vocabulary size, another tokenizer: named too.
  _tokenizer(tmp_path / "tok_c", list(reversed(WORDS)))
  config_c = _rm_config(tmp_path / "rm_c", tmp_path / "tok_c", world / "pairs.jsonl")
  rm_c = _fake_run(tmp_path / "rm_c", config_c, len(SPECIAL) + len(WORDS))
  with pytest.raises(ValueError, match=rf"reward model {rm_c}: its tokenizer 'sha256:"):
    ppo_trainer.train(_ppo_config(world, tmp_path / "ppo", world / "rm", rm_c))


def test_synthetic_reward_workdirs_of_another_task_are_refused_by_name(tmp_path):
  """The synthetic default: the policy is the first run's task; a second run trained on a
  task with another vocabulary used to be scored on that policy's token ids unchecked."""
  def synthetic_run(name, vocab):
    c = train_rm.get_config()
    c.data.synthetic.update(vocab_size=vocab, num_train_pairs=8, num_eval_pairs=8)
    c.model.update(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
    return _fake_run(tmp_path / name, c, vocab)

  first, second = synthetic_run("rm_a", 64), synthetic_run("rm_b", 80)
  c = ppo_config.get_config()
  c.reward.workdirs = (str(first), str(second))
  c.rl.update(iterations=1, prompts=4, samples_per_prompt=2, max_new_tokens=4)
  c.train.workdir = str(tmp_path / "ppo")
  with pytest.raises(ValueError, match=rf"reward model {second}: its vocab_size 80 differs"):
    ppo_trainer.train(c)


def test_the_synthetic_policy_on_token_id_prompts_from_a_file(tmp_path):
  c = train_rm.get_config()
  c.data.synthetic.update(num_train_pairs=8, num_eval_pairs=8)
  c.model.update(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
  rm = _fake_run(tmp_path / "rm", c, 64)
  rows = [[2, 5, 6, 7], [2, 9, 10, 11, 12, 13]]  # BOS first, as the task's own prompts
  (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r}) + "\n"
                                                  for r in rows))
  config = ppo_config.get_config()
  config.reward.workdirs = (str(rm),)
  config.prompts.path = str(tmp_path / "prompts.jsonl")
  sources = build.load_reward_sources(config.reward.workdirs, None)
  task = build.rollout_task(config, sources)
  build.check_sources(sources, task)  # the synthetic world: its task id, no tokenizer
  assert task.task == sources[0].task and task.evaluate is not None and task.eos_id == 1
  tokens, lengths = task.sample_prompts(jax.random.key(0), 8)
  for row, n in zip(tokens, lengths):
    assert row[:n].tolist() in rows
  (tmp_path / "text.jsonl").write_text(json.dumps({"prompt": "some text"}) + "\n")
  config.prompts.path = str(tmp_path / "text.jsonl")
  with pytest.raises(ValueError, match="holds text prompts, but the synthetic task's policy"):
    build.rollout_task(config, sources)


def _gguf_from_hf(folder, path):
  """The HF llama of ``folder`` as a float32 GGUF, Q and K permuted as llama.cpp does."""
  import gguf  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  hf = json.loads((folder / "config.json").read_text())
  tensors = load_file(str(folder / "model.safetensors"))
  names = {v: k for k, v in gguf_io._LAYER_NAMES.items()}  # pylint: disable=protected-access
  globals_ = {v: k for k, v in gguf_io._GLOBAL_NAMES.items()}  # pylint: disable=protected-access
  permute = lambda w, h: w.reshape(h, 2, w.shape[0] // h // 2, *w.shape[1:]).swapaxes(
      1, 2).reshape(w.shape)
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(hf["num_hidden_layers"])
  writer.add_context_length(hf["max_position_embeddings"])
  writer.add_embedding_length(hf["hidden_size"])
  writer.add_feed_forward_length(hf["intermediate_size"])
  writer.add_head_count(hf["num_attention_heads"])
  writer.add_head_count_kv(hf["num_key_value_heads"])
  writer.add_rope_freq_base(hf.get("rope_theta", 10_000.0))
  writer.add_layer_norm_rms_eps(hf["rms_norm_eps"])
  writer.add_token_list([f"tok{i}" for i in range(hf["vocab_size"])])
  for name, w in tensors.items():
    if name in globals_:
      gguf_name = globals_[name]
    else:
      layer = name.split(".")[2]  # model.layers.<layer>.<base>.weight
      base = name[len(f"model.layers.{layer}."):-len(".weight")]
      gguf_name = f"blk.{layer}.{names[base]}.weight"
      if base == "self_attn.q_proj":
        w = permute(w, hf["num_attention_heads"])
      elif base == "self_attn.k_proj":
        w = permute(w, hf["num_key_value_heads"])
    writer.add_tensor(gguf_name, np.ascontiguousarray(w.astype(np.float32)))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def test_a_gguf_policy_is_the_same_model_as_its_hf_original(world, tmp_path):
  _gguf_from_hf(world / "policy", tmp_path / "policy.gguf")
  config = ppo_config.get_config()
  config.policy.init_from = str(tmp_path / "policy.gguf")
  from_gguf = build.policy_model(config, [])
  config.policy.init_from = str(world / "policy")
  from_hf = build.policy_model(config, [])
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 9)))
  logits = lambda m: np.asarray(m.logits(m(tokens)[0]))
  np.testing.assert_allclose(logits(from_gguf), logits(from_hf), rtol=1e-5, atol=1e-5)
