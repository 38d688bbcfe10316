"""``rmjax dry-run``: tiny reward-model and PPO configs compiled in a child process with 8
fake devices (data 2 x fsdp 2 x tensor 2); exact bytes against really sharded arrays."""

import collections
import json

import gguf
import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx

from rmjax import parallel
from rmjax.commands import dry_run as command
from rmjax.configs import dry_run, rl, train_rm
from rmjax.dry_run import child, launch, programs, report
from rmjax.models import hf_io
from rmjax.models.transformer import Transformer
from rmjax.rm import build as rm_build
from rmjax.runtime.optim import make_optimizer

MESH = dict(data=2, fsdp=2, tensor=2, ensemble=1)
MODEL = dict(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)


def rm_config(**mesh):
  c = train_rm.get_config()
  c.mesh = ml_collections.ConfigDict({**MESH, **mesh})
  c.model.update(MODEL)
  c.train.batch_size = 8
  c.dry_run = dry_run.section(vocab_size=64, seq_len=16)
  return c


def ppo_config():
  c = rl.get_config()
  c.mesh = ml_collections.ConfigDict(MESH)
  c.rl.update(dict(prompts=4, samples_per_prompt=2, minibatches=1, max_new_tokens=4))
  c.dry_run = dry_run.section(command="rl", vocab_size=64, prompt_len=4,
                              model=ml_collections.ConfigDict(dict(preset="tiny_llama", **MODEL)))
  return c


@pytest.fixture(scope="module")
def rm_report():
  return launch.run(rm_config(), timeout_s=300)


def device_bytes(tree) -> int:
  """Largest per-device bytes of real sharded arrays, from their addressable shards."""
  totals = collections.Counter()
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      totals[shard.device.id] += shard.data.nbytes
  return max(totals.values())


def test_rm_dry_run_bytes_match_a_really_sharded_model(rm_report, eight_devices):
  config = rm_config()
  mesh = parallel.make_mesh(parallel.MeshConfig(**config.mesh), eight_devices)
  cfg = rm_build.build_model_config(config.model, 64)
  params = nnx.state(parallel.init_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh))
  tx = make_optimizer(config.optim, config.train.steps)
  opt_state = jax.jit(tx.init, out_shardings=parallel.tree_shardings(
      jax.eval_shape(tx.init, params), mesh))(params)

  assert rm_report["mesh"] == dict(mesh.shape)
  assert rm_report["parameter_bytes"] == device_bytes(params)
  assert rm_report["optimizer_bytes"] == device_bytes(opt_state)
  assert rm_report["parameter_count"] == sum(x.size for x in jax.tree.leaves(params))
  step = rm_report["programs"]["train_step"]
  assert step["temp_bytes"] > 0 and step["compile_s"] > 0
  rows_per_device = 8 // 4  # batch 8 over data x fsdp = 4
  # per row: two sides of 16 int32 tokens and 16 bool mask, four int32/float32 scalars
  assert step["batch_bytes"] == rows_per_device * (2 * 16 * 4 + 2 * 16 + 4 * 4)
  assert report.limit_problem(rm_report) is None  # no limit set
  assert rm_report["cpu_scheduler"] == "memory"
  assert "temporaries (CPU estimate, memory schedule)" in report.format_table(rm_report)


def test_doubling_fsdp_halves_the_sharded_parameter_bytes(eight_devices):
  def leaf_bytes(**mesh):
    config = rm_config(**mesh)
    plan = programs.build(config, parallel.make_mesh(parallel.MeshConfig(**config.mesh),
                                                     eight_devices))
    params = plan.resident["params"][1]
    return ([child.per_device_bytes(x) for x in jax.tree.leaves(params)],
            ["fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(params)])

  two, on_fsdp = leaf_bytes(data=2, fsdp=2)
  four, _ = leaf_bytes(data=1, fsdp=4)
  assert sum(on_fsdp) >= 3  # embedding, attention and MLP kernels at least
  for b2, b4, sharded in zip(two, four, on_fsdp):
    assert b4 == (b2 // 2 if sharded else b2)
  assert sum(four) < sum(two)


def test_lora_gives_optimizer_state_to_adapters_and_heads_only(eight_devices):
  config = rm_config()
  config.model.lora_rank = 2
  plan = programs.build(config, parallel.make_mesh(parallel.MeshConfig(**MESH), eight_devices))
  params, opt_state = plan.resident["params"][1], plan.resident["opt_state"][1]
  variables = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
  adapters = sum(v.size for v in variables if isinstance(v, nnx.LoRAParam))
  trainable = adapters + params["reward_head"].size
  assert adapters > 0
  assert sum(x.size for x in jax.tree.leaves(opt_state)) == 2 * trainable + 2  # mu, nu, counts


def test_ppo_dry_run_over_the_limit_fails_naming_it(tmp_path):
  config = ppo_config()
  config.dry_run.memory_per_device_gib = 1e-6  # about 1 KiB
  config.dry_run.report = str(tmp_path / "report.json")
  with pytest.raises(SystemExit) as exit_info:
    command.run(config)
  message = str(exit_info.value.code)
  assert "exceeds dry_run.memory_per_device_gib=1e-06" in message
  assert "parameters" in message and "temporaries" in message and "fsdp" in message
  written = json.loads((tmp_path / "report.json").read_text())  # written before failing
  assert set(written["programs"]) == {"rl_update", "rollout_forward"}
  assert set(written["groups"]) == {"actor", "critic", "reference", "reward_model",
                                    "actor_opt", "critic_opt"}
  groups = written["groups"]
  assert groups["actor"]["bytes"] == groups["reference"]["bytes"]
  assert groups["actor_opt"]["count"] == 2 * groups["actor"]["count"] + 2  # mu, nu, counts


def test_critic_free_dry_run_holds_no_critic(tmp_path):
  config = ppo_config()
  config.rl.algorithm = "grpo"
  config.dry_run.memory_per_device_gib = 1e-6
  config.dry_run.report = str(tmp_path / "report.json")
  with pytest.raises(SystemExit):
    command.run(config)
  written = json.loads((tmp_path / "report.json").read_text())
  assert set(written["groups"]) == {"actor", "reference", "reward_model", "actor_opt"}
  assert set(written["programs"]) == {"rl_update", "rollout_forward"}


def test_mesh_not_filling_the_devices_is_a_clear_error():
  config = rm_config(data=3, fsdp=1, tensor=1)
  with pytest.raises(ValueError, match="needs 3 devices but 8 are available"
                                       r" \(dry_run.devices=8\)"):
    command.run(config)


def test_unknown_cpu_scheduler_is_a_clear_error():
  config = rm_config()
  config.dry_run.cpu_scheduler = "fastest"
  with pytest.raises(ValueError, match="dry_run.cpu_scheduler='fastest' is not one of"):
    command.run(config)


def test_topology_without_libtpu_is_a_clear_error():
  with pytest.raises(ValueError, match="needs libtpu"):
    child.target_devices("v5p:2x2x1")


# ------------------------------------------- every config train-rm accepts, one builder


def _mesh(config, devices):
  return parallel.make_mesh(parallel.MeshConfig(**config.mesh), devices)


def _hf_folder(path, weights: bool):
  """A Hugging Face folder of a 3-layer model with 96 token ids: config.json, and its
  safetensors when ``weights``."""
  cfg = rm_build.build_model_config(rm_config().model, 96).replace(n_layers=3, lm_head=True,
                                                                   num_reward_heads=0)
  path.mkdir()
  if weights:
    hf_io.save_hf(Transformer(cfg, rngs=nnx.Rngs(0)), path)
  else:
    (path / "config.json").write_text(json.dumps(hf_io.config_to_hf(cfg)))
  return path


def _structure(tree):
  """Each leaf's path, shape, dtype and sharding spec."""
  return [(jax.tree_util.keystr(p), x.shape, x.dtype, tuple(x.sharding.spec))
          for p, x in jax.tree_util.tree_leaves_with_path(tree)]


VARIANTS = {
    "swav, separate members": lambda c: (c.loss.contrastive.update(kind="swav"),
                                         c.ensemble.update(k=2)),
    "shared backbone": lambda c: c.ensemble.update(k=3, shared_backbone=True),
    "lora, metarm": lambda c: (c.model.update(lora_rank=2), c.metarm.update(enabled=True)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_abstract_program_is_the_trainers(variant, eight_devices):
  """``build(abstract=True)`` (the dry run) gives the state ``build`` gives the trainer:
  the same leaves, shapes, dtypes and shardings, and nothing allocated."""
  config = rm_config()
  VARIANTS[variant](config)
  mesh = _mesh(config, eight_devices)
  real = rm_build.build(config, 64, mesh)
  abstract = rm_build.build(config, 64, mesh, abstract=True)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract.state))
  assert _structure(abstract.state) == _structure(real.state)
  assert abstract.model_cfg == real.model_cfg


def test_a_pretrained_backbone_gives_its_shapes_without_its_weights(tmp_path, eight_devices):
  """``model.init_from``: the dry run reads config.json alone (this folder has no weights,
  which loading would need), and builds what the trainer loads from a folder that has."""
  config = rm_config()
  config.model.init_from = str(_hf_folder(tmp_path / "shapes_only", weights=False))
  mesh = _mesh(config, eight_devices)
  plan = programs.build(config, mesh)
  params = plan.resident["params"][1]
  assert params["embed"].shape == (96, 16)  # the file's vocabulary, not dry_run.vocab_size
  assert len(params["blocks"]) == 3  # the file's depth, not the preset's
  plan.programs[0].jitted.lower(*plan.programs[0].args).compile()
  config.model.init_from = str(_hf_folder(tmp_path / "with_weights", weights=True))
  real = rm_build.build(config, 64, mesh)
  assert _structure(rm_build.build(config, 64, mesh, abstract=True).state) == _structure(
      real.state)
  config.dry_run.vocab_size = 97
  with pytest.raises(ValueError, match="has 96 token ids but the data's tokenizer has 97"):
    programs.build(config, mesh)


def test_a_pretrained_backbone_runs_with_the_sections_dtypes_and_remat(tmp_path, eight_devices):
  """The file gives the architecture; the section's run fields (the pod configs' bfloat16
  and remat) still apply, in the trainer's program and the dry run's alike."""
  config = rm_config()
  config.model.update(init_from=str(_hf_folder(tmp_path / "hf", weights=True)),
                      dtype="bfloat16", param_dtype="bfloat16", remat=True)
  mesh = _mesh(config, eight_devices)
  real = rm_build.build(config, 64, mesh)
  assert (real.model_cfg.dtype, real.model_cfg.param_dtype, real.model_cfg.remat) == (
      "bfloat16", "bfloat16", True)
  assert real.model_cfg.n_layers == 3  # the file's
  assert real.state["params"]["embed"].dtype == jnp.bfloat16
  assert _structure(rm_build.build(config, 64, mesh, abstract=True).state) == _structure(
      real.state)


def test_a_gguf_backbone_gives_its_shapes_from_its_metadata(tmp_path, eight_devices):
  """A GGUF file holding metadata only (no tensor, which loading would need)."""
  path = tmp_path / "metadata_only.gguf"
  writer = gguf.GGUFWriter(str(path), "llama")
  for add, value in ((writer.add_block_count, 2), (writer.add_context_length, 64),
                     (writer.add_embedding_length, 16), (writer.add_feed_forward_length, 48),
                     (writer.add_head_count, 2), (writer.add_head_count_kv, 1)):
    add(value)
  writer.add_token_list([f"t{i}" for i in range(80)])
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  config = rm_config()
  config.model.init_from = str(path)
  plan = programs.build(config, _mesh(config, eight_devices))
  params = plan.resident["params"][1]
  assert params["embed"].shape == (80, 16) and len(params["blocks"]) == 2
  assert params["blocks"][0]["mlp"]["down"].shape == (48, 16)
  plan.programs[0].jitted.lower(*plan.programs[0].args).compile()


def test_metarm_steps_compile_with_their_meta_batch(eight_devices):
  config = rm_config()
  config.metarm.update(enabled=True, k=3, prompts_per_step=4)
  plan = programs.build(config, _mesh(config, eight_devices))
  batch = plan.programs[0].batch
  assert batch["meta_tokens"].shape == (4, 3, 16) and batch["meta_mask"].dtype == bool
  assert batch["meta_tokens"].sharding.spec[0] == ("data", "fsdp")
  _, metrics = jax.eval_shape(plan.programs[0].jitted, *plan.programs[0].args)
  assert {"meta_difference", "meta_grad_norm"} <= set(metrics)  # MetaRM's update, not BT's
  plan.programs[0].jitted.lower(*plan.programs[0].args).compile()
  config.metarm.prompts_per_step = 3  # what train-rm refuses, the dry run refuses too
  with pytest.raises(ValueError, match="prompts_per_step=3 must be a positive multiple"):
    programs.build(config, _mesh(config, eight_devices))


def test_swav_prototypes_are_their_own_parameter_group_member(eight_devices):
  config = rm_config(data=1, ensemble=2)
  config.loss.contrastive.update(kind="swav", prototypes=8)
  config.ensemble.k = 2
  plan = programs.build(config, _mesh(config, eight_devices))
  params = plan.resident["params"][1]
  assert set(params) == {"model", "prototypes"}
  assert params["prototypes"].shape == (2, 16, 8)  # per member [D, K]
  assert params["prototypes"].sharding.spec[0] == "ensemble"
  assert "prototypes" not in params["model"]


def test_metarm_init_from_and_lora_through_the_child_process(tmp_path):
  """The refusals are gone end to end: the report of a MetaRM run with LoRA on a
  pretrained backbone, from the child process."""
  config = rm_config()
  config.model.update(init_from=str(_hf_folder(tmp_path / "hf", weights=False)), lora_rank=2)
  config.metarm.enabled = True
  result = launch.run(config, timeout_s=300)
  groups = result["groups"]
  base = 96 * 16 + 3 * (16 * 16 + 2 * 8 * 16 + 16 * 16 + 3 * 16 * 32 + 2 * 16) + 16
  # rank-2 adapters A [in, 2], B [2, out] on qkv, o, gate_up, down of each block
  adapters = 3 * 2 * ((16 + 32) + (16 + 16) + (16 + 64) + (32 + 16))
  head = 16
  assert groups["params"]["count"] == base + adapters + head
  assert groups["opt_state"]["count"] == 2 * (adapters + head) + 2  # mu, nu, counts
  assert set(result["programs"]) == {"train_step"}


def test_a_ppo_policy_from_a_hugging_face_folder_gives_the_actor_its_shapes(tmp_path):
  """``policy.init_from``: the actor (and the reference, its copy) are the folder's 3-layer,
  96-token model, read from config.json alone; the critic keeps the model section's."""
  config = ppo_config()
  config.policy.init_from = str(_hf_folder(tmp_path / "hf", weights=False))
  groups = launch.run(config, timeout_s=300)["groups"]
  block = 16 * 16 + 2 * 8 * 16 + 16 * 16 + 3 * 16 * 32 + 2 * 16  # qkv, o, gate_up, down, norms
  untied_lm_head = 96 * 16 if not rm_build.build_model_config(
      rm_config().model, 96).tie_embeddings else 0
  assert groups["actor"]["count"] == 96 * 16 + 3 * block + 16 + untied_lm_head
  assert groups["reference"]["count"] == groups["actor"]["count"]
  # the section's 1-layer model on 64 ids: final norm, reward head and value head
  assert groups["critic"]["count"] == 64 * 16 + 1 * block + 16 + 16 + 16


def test_a_ppo_policy_from_an_rmjax_workdir_is_refused_by_name(tmp_path, eight_devices):
  config = ppo_config()
  config.policy.init_from = str(tmp_path)
  with pytest.raises(ValueError, match=rf"policy.init_from={tmp_path}: the dry run reads"):
    programs.rl_plan(config, _mesh(config, eight_devices))
