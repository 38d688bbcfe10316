"""``rmjax export-hf`` end to end: a reward model trained for a few steps, ensemble
checkpoints (separate members, K heads on one backbone), a PPO actor and the synthetic base
policy exported, loaded by transformers' torch classes and matched to ours (atol 1e-4)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from flax import nnx

from rmjax.commands import export_hf
from rmjax.configs import export_hf as export_config
from rmjax.configs import train_rm
from rmjax.models.transformer import Transformer
from rmjax.rm import load as load_rm
from rmjax.rm import members as ensemble
from rmjax.rm import trainer as rm_trainer
from rmjax.rm.load import load_ensemble
from rmjax.runtime.checkpoint import Checkpointer, provenance
from rmjax.tasks import preference as synthetic

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

STEPS = 3
VOCAB = 64  # the synthetic task's


def _config(workdir, k=1, shared_backbone=False):
  config = train_rm.get_config()
  config.ensemble.update(k=k, shared_backbone=shared_backbone)
  config.data.synthetic.update(num_train_pairs=32, num_eval_pairs=8)
  config.model.update(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
  config.train.update(steps=STEPS, batch_size=8, log_every=STEPS, eval_every=STEPS,
                      save_every=STEPS, workdir=str(workdir))
  return config


def _random(cfg, seed):
  """``Transformer(cfg)`` with N(0, 0.3²) parameters drawn by NumPy (no init compiles)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)
  pure = jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype),
                      nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def _save_run(workdir, config, params, step=1):
  """A checkpoint laid out as rmjax.runtime.checkpoint writes it: {"params": ...} in the
  state, the run config in the provenance."""
  checkpointer = Checkpointer(workdir / "checkpoints", provenance=provenance(config))
  checkpointer.save(step, {"params": params}, force=True)
  checkpointer.wait()
  checkpointer.close()
  return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Workdirs of a 3-step train-rm run (one model) and two ensemble checkpoints with
  random parameters: separate members (K=2) and K=3 heads on one backbone."""
  root = tmp_path_factory.mktemp("runs")
  rm_trainer.train(_config(root / "trained"))
  members_config = _config(root / "members", k=2)
  cfg = load_rm.model_config_of(members_config.model, VOCAB)
  stacked = ensemble.stack_states([nnx.state(_random(cfg, m)) for m in range(2)])
  heads_config = _config(root / "heads", k=3, shared_backbone=True)
  cfg = load_rm.model_config_of(heads_config.model, VOCAB, heads=3)
  heads = _save_run(root / "heads", heads_config, nnx.state(_random(cfg, 2)))
  gaussian_config = _config(root / "gaussian", k=3, shared_backbone=True)
  gaussian_config.ensemble.gaussian = True  # 3 mean columns, then 3 log-std columns
  cfg = load_rm.model_config_of(gaussian_config.model, VOCAB, heads=6)
  return {"trained": root / "trained",
          "members": _save_run(root / "members", members_config, stacked), "heads": heads,
          "gaussian": _save_run(root / "gaussian", gaussian_config, nnx.state(_random(cfg, 3)))}


def _export(workdir, out, **fields):
  config = export_config.get_config()
  config.update(workdir=str(workdir), out=str(out), **fields)
  return export_hf.run(config)


def _batch():
  """Right-padded synthetic-vocabulary tokens int32 [4, 12], mask [4, 12]; no real pads."""
  rng = np.random.default_rng(0)
  mask = np.arange(12)[None] < np.array([12, 9, 4, 1])[:, None]
  tokens = np.where(mask, rng.integers(1, 64, mask.shape), synthetic.PAD).astype(np.int32)
  return tokens, mask


def _hf(folder, cls, tokens, mask):
  model = cls.from_pretrained(folder, dtype=torch.float32).eval()
  with torch.no_grad():
    out = model(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)))
  return out.logits.numpy(), model


def _scores(workdir):
  scorer, _ = load_ensemble(workdir)
  return np.asarray(scorer(*_batch()))  # [4, K]


def test_trained_model(runs, tmp_path):
  record = _export(runs["trained"], tmp_path / "out")
  assert record["folders"] == ["."] and record["step"] == STEPS
  written = json.loads((tmp_path / "out" / "rmjax_export.json").read_text())
  assert written["source"] == str(runs["trained"]) and written["kind"] == "reward"
  assert written["git_commit"] == load_rm.read_provenance(runs["trained"])[1]["git_commit"]
  theirs, model = _hf(tmp_path / "out", transformers.AutoModelForSequenceClassification,
                      *_batch())
  assert type(model).__name__ == "LlamaForSequenceClassification"
  assert model.config.num_labels == 1 and model.config.pad_token_id == synthetic.PAD
  np.testing.assert_allclose(theirs, _scores(runs["trained"]), atol=1e-4)


def test_separate_members_one_folder_each(runs, tmp_path):
  record = _export(runs["members"], tmp_path / "out", step=1)
  assert record["folders"] == ["member_0", "member_1"] and record["step"] == 1
  ours = _scores(runs["members"])  # [4, 2]
  assert np.abs(ours[:, 0] - ours[:, 1]).max() > 1e-3  # members differ: a swap would show
  for m in range(2):
    theirs, model = _hf(tmp_path / "out" / f"member_{m}",
                        transformers.LlamaForSequenceClassification, *_batch())
    assert model.config.num_labels == 1
    np.testing.assert_allclose(theirs[:, 0], ours[:, m], atol=1e-4)
  _export(runs["members"], tmp_path / "one", member=1)  # one member, straight into out
  theirs, _ = _hf(tmp_path / "one", transformers.LlamaForSequenceClassification, *_batch())
  np.testing.assert_allclose(theirs[:, 0], ours[:, 1], atol=1e-4)


def test_shared_backbone_k_labels(runs, tmp_path):
  _export(runs["heads"], tmp_path / "out")
  ours = _scores(runs["heads"])
  theirs, model = _hf(tmp_path / "out", transformers.LlamaForSequenceClassification, *_batch())
  assert model.config.num_labels == 3
  np.testing.assert_allclose(theirs, ours, atol=1e-4)
  _export(runs["heads"], tmp_path / "head2", member=2)  # one head
  theirs, model = _hf(tmp_path / "head2", transformers.LlamaForSequenceClassification,
                      *_batch())
  assert model.config.num_labels == 1
  np.testing.assert_allclose(theirs, ours[:, 2:], atol=1e-4)


def test_gaussian_heads_export_their_means_only(runs, tmp_path):
  _export(runs["gaussian"], tmp_path / "out")
  ours = _scores(runs["gaussian"])  # the means [4, 3]
  theirs, model = _hf(tmp_path / "out", transformers.LlamaForSequenceClassification, *_batch())
  assert model.config.num_labels == 3
  np.testing.assert_allclose(theirs, ours, atol=1e-4)


def _check_policy(folder, model):
  tokens, mask = _batch()
  theirs, hf_model = _hf(folder, transformers.LlamaForCausalLM, tokens, mask)
  assert hf_model.config.eos_token_id == synthetic.EOS
  logits = nnx.jit(lambda model, t, m: model.logits(model(t, m)[0]))
  ours = np.asarray(logits(model, jnp.asarray(tokens), jnp.asarray(mask)))
  np.testing.assert_allclose(theirs[mask], ours[mask], atol=1e-4)


def test_base_policy_of_a_synthetic_run(runs, tmp_path):
  record = _export(runs["trained"], tmp_path / "policy", kind="policy")
  assert record["kind"] == "policy"
  run_config = load_ensemble(runs["trained"])[1]
  _check_policy(tmp_path / "policy", synthetic.build_task(
      synthetic.SyntheticConfig(**run_config.data.synthetic)).policy)


def test_ppo_actor(runs, tmp_path):
  """A ppo-shaped checkpoint (state["actor"], provenance naming reward.workdirs) exports
  its actor; the kind comes from the run config."""
  actor = _random(synthetic.SyntheticConfig().policy_config(), 7)
  run = {"rl": {"iterations": 1}, "reward": {"workdirs": [str(runs["trained"])]}}
  checkpointer = Checkpointer(tmp_path / "ppo" / "checkpoints", provenance=provenance(run))
  checkpointer.save(5, {"actor": nnx.state(actor), "step": jnp.ones((), jnp.int32)}, force=True)
  checkpointer.wait()
  checkpointer.close()
  record = _export(tmp_path / "ppo", tmp_path / "actor")
  assert record["kind"] == "policy" and record["step"] == 5
  _check_policy(tmp_path / "actor", actor)
  with pytest.raises(ValueError, match="is an rl run: export its policy with kind=policy"):
    _export(tmp_path / "ppo", tmp_path / "x", kind="reward")


def test_failed_write_leaves_no_folder(runs, tmp_path, monkeypatch):
  real = export_hf._save

  def second_fails(model, folder, *args):
    if folder.name == "member_1":
      raise OSError("disk full")
    real(model, folder, *args)

  monkeypatch.setattr(export_hf, "_save", second_fails)
  with pytest.raises(OSError, match="disk full"):
    _export(runs["members"], tmp_path / "out")
  assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_clear_errors(runs, tmp_path):
  with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
    _export(tmp_path / "nowhere", tmp_path / "a")
  with pytest.raises(FileNotFoundError, match=r"no checkpoint step 99 in .*members.* \(steps: "):
    _export(runs["members"], tmp_path / "a", step=99)
  with pytest.raises(ValueError, match="member=2 does not exist: .* holds 2 members"):
    _export(runs["members"], tmp_path / "a", member=2)
  with pytest.raises(ValueError, match="member=0 applies to reward models"):
    _export(runs["members"], tmp_path / "a", kind="policy", member=0)
  with pytest.raises(ValueError, match="data.source='files'"):
    files_run = _save_run(tmp_path / "files", _files_config(), {"x": np.zeros(1)})
    _export(files_run, tmp_path / "a", kind="policy")
  assert not (tmp_path / "a").exists()
  assert not list(tmp_path.glob(".a.tmp-*"))  # a failed export leaves nothing behind
  (tmp_path / "b").mkdir()
  with pytest.raises(FileExistsError, match="set --config.overwrite=True"):
    _export(runs["members"], tmp_path / "b")
  _export(runs["members"], tmp_path / "b", overwrite=True, member=0)
  assert (tmp_path / "b" / "model.safetensors").exists()


def _files_config():
  config = train_rm.get_config()
  config.data.source = "files"
  return config


def test_tokenizer_folder_copied_and_its_pad_id_used(runs, tmp_path):
  vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>", "good", "bad"])}
  core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>",
                                       eos_token="</s>").save_pretrained(tmp_path / "tok")
  config = _config(tmp_path / "run", k=3, shared_backbone=True)
  config.data.update(source="files")
  config.data.files.tokenizer = str(tmp_path / "tok")
  params = load_ensemble(runs["heads"])[0].params
  record = _export(_save_run(tmp_path / "run", config, params), tmp_path / "out")
  assert record["pad_token_id"] == 3 and record["tokenizer"] == str(tmp_path / "tok")
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  batch = tokenizer(["good bad good", "bad"], padding=True, return_tensors="np")
  assert batch["input_ids"][1, -1] == 3  # padded with the pad id the classifier skips
  theirs, model = _hf(tmp_path / "out", transformers.LlamaForSequenceClassification,
                      batch["input_ids"], batch["attention_mask"].astype(bool))
  assert model.config.pad_token_id == 3
  np.testing.assert_allclose(theirs, np.asarray(load_ensemble(tmp_path / "run")[0](
      batch["input_ids"], batch["attention_mask"].astype(bool))), atol=1e-4)
