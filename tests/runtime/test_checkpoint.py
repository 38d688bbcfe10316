"""Checkpointer: resharding round trip, keep/interval, JSON items, kill/resume, SIGTERM.

The subprocess tests run a tiny training script (written to ``tmp_path``) that saves
every 10 of 40 steps; all runs share a JAX compilation cache so that only the first
compiles.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rmjax.models import config as model_config
from rmjax.models.transformer import Transformer
from rmjax.parallel import init_sharded, make_mesh, tree_shardings
from rmjax.runtime import checkpoint as ck

REPO = pathlib.Path(__file__).resolve().parents[2]


def _train_state(mesh):
  """(params, adamw state after one update, step, rng key), all on ``mesh``."""
  cfg = model_config.tiny_llama(num_reward_heads=1)
  params = nnx.state(init_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh),
                     nnx.Param)
  tx = optax.adamw(1e-2)
  opt = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
  updates, opt = tx.update(grads, opt, params)
  state = {"params": optax.apply_updates(params, updates), "opt": opt,
           "step": jnp.asarray(7, jnp.int32), "rng": jax.random.key(42)}
  return jax.device_put(state, tree_shardings(state, mesh))


def _host(x):
  return np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                    else x)


@pytest.fixture(scope="module")
def saved_on_2x2x2(eight_devices):
  return _train_state(make_mesh((2, 2, 2)))


@pytest.mark.parametrize("target", [(8, 1, 1), (1, 4, 2)], ids=["8x1x1", "1x4x2"])
def test_round_trip_onto_another_mesh(tmp_path, saved_on_2x2x2, target):
  state = saved_on_2x2x2
  with ck.Checkpointer(tmp_path, keep=2, interval=1) as ckpt:
    assert ckpt.save(7, state, {"data_position": 7})
    ckpt.wait()
  new_mesh = make_mesh(target)
  shardings = tree_shardings(state, new_mesh)
  with ck.Checkpointer(tmp_path) as ckpt:
    step, restored, extra = ckpt.restore_latest(ck.abstract_like(state, shardings))
  assert (step, extra) == (7, {"data_position": 7})
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert isinstance(restored["params"], nnx.State)
  assert restored["params"]["embed"].get_metadata()["axes"] == ("vocab", "embed")
  for (path, a), b, s in zip(jax.tree_util.tree_leaves_with_path(restored),
                             jax.tree.leaves(state), jax.tree.leaves(shardings)):
    name = jax.tree_util.keystr(path)
    assert a.dtype == b.dtype and a.shape == b.shape, name
    assert a.sharding == s, (name, a.sharding, s)
    np.testing.assert_array_equal(_host(a), _host(b), err_msg=name)
  # (8,1,1) replicates every parameter; (1,4,2) shards them differently from (2,2,2).
  assert any(not s.is_fully_replicated for s in jax.tree.leaves(shardings)) == (
      target == (1, 4, 2))


def _small(mesh):
  return {"w": jax.device_put(jnp.arange(8.0), NamedSharding(mesh, PartitionSpec("data")))}


def test_interval_and_keep(tmp_path, eight_devices):
  mesh = make_mesh((8, 1, 1))
  state = _small(mesh)
  with ck.Checkpointer(tmp_path, keep=2, interval=5) as ckpt:
    saved = [s for s in range(1, 23) if ckpt.save(s, state, {"s": s})]
    assert saved == [5, 10, 15, 20]  # step 1 of an empty directory is not special
    ckpt.wait()
    assert ckpt.all_steps() == [15, 20]
    assert ckpt.save(23, state, {"s": 23}, force=True)
    assert not ckpt.save(23, state, {"s": 23}, force=True)  # already there
    ckpt.wait()
    assert ckpt.all_steps() == [20, 23]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["20", "23"]
  with ck.Checkpointer(tmp_path, keep=2, interval=5) as ckpt:
    step, restored, extra = ckpt.restore_latest(
        ck.abstract_like(state, {"w": NamedSharding(mesh, PartitionSpec())}))
  assert (step, extra) == (23, {"s": 23})
  np.testing.assert_array_equal(restored["w"], np.arange(8.0))


def test_restore_empty_and_unsharded_target(tmp_path, eight_devices):
  state = _small(make_mesh((8, 1, 1)))
  with ck.Checkpointer(tmp_path) as ckpt:
    assert ckpt.restore_latest(state) is None  # concrete arrays carry shardings too
    # Checked before looking for steps, so a missing sharding fails on the first run.
    with pytest.raises(ValueError, match=r"\['w'\] has no sharding"):
      ckpt.restore_latest({"w": jax.ShapeDtypeStruct((8,), jnp.float32)})


def test_extra_and_provenance_json(tmp_path, eight_devices):
  config = ml_collections.ConfigDict({"model": {"d_model": 64, "rope": (1.0, 2.0)},
                                      "lr": 1e-3, "name": "bt"})
  prov = ck.provenance(config, data_hash="sha256:abc")
  assert prov["config"] == {"model": {"d_model": 64, "rope": [1.0, 2.0]}, "lr": 1e-3,
                            "name": "bt"}
  assert prov["versions"]["jax"] == jax.__version__
  assert prov["versions"]["flax"] == __import__("flax").__version__
  assert set(prov["versions"]) == {"jax", "flax", "optax", "orbax", "numpy", "rmjax"}
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                        text=True).stdout.strip() or None
  assert prov["git_commit"] == head and prov["data_hash"] == "sha256:abc"
  model_prov = ck.provenance(model_config.tiny_llama())  # a dataclass config
  assert model_prov["config"]["d_model"] == 64

  key = jax.random.key(3)
  extra = {"data_position": np.int64(12), "rng_key_data": jax.random.key_data(key),
           "epoch": 0, "shard_offsets": [np.int32(1), 2]}
  with ck.Checkpointer(tmp_path, provenance=prov) as ckpt:
    ckpt.save(12, _small(make_mesh((8, 1, 1))), extra)
    ckpt.wait()
    assert ckpt.read_provenance() == prov == ckpt.read_provenance(12)
    _, _, got = ckpt.restore_latest(jax.device_put(_small(make_mesh((8, 1, 1)))))
  assert got == {"data_position": 12, "rng_key_data": np.asarray(
      jax.random.key_data(key)).tolist(), "epoch": 0, "shard_offsets": [1, 2]}
  back = jax.random.wrap_key_data(jnp.asarray(got["rng_key_data"], jnp.uint32))
  np.testing.assert_array_equal(jax.random.normal(back, (3,)), jax.random.normal(key, (3,)))


def test_sigterm_handler_sets_flag_and_restores(tmp_path):
  previous = signal.getsignal(signal.SIGTERM)
  calls = []
  with ck.Checkpointer(tmp_path) as ckpt:
    with ckpt.install_sigterm_handler(calls.append):
      assert not ckpt.preempted
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.01)  # the handler runs at the next bytecode boundary
      assert ckpt.preempted and calls == [signal.SIGTERM]
  assert signal.getsignal(signal.SIGTERM) is previous


# --- subprocess runs ----------------------------------------------------------------

SCRIPT = r'''"""Tiny resumable training run (written by tests/train/test_checkpoint.py).

usage: train_script.py CKPT_DIR OUT_JSON [--kill-after-commit N] [--die-in-commit N]
                       [--ready-file PATH] [--step-sleep SECONDS]

Batches are a pure function of the data position (a seeded numpy generator), the
noise key travels in the JSON ``extra`` item, the rest of the state in ``state``.
"""
import argparse, json, os, signal, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from rmjax import parallel as P
from rmjax.models import config as C, transformer as T
from rmjax.runtime import checkpoint as ck
STEPS, INTERVAL, BATCH, SEQ, SEED = 40, 10, 8, 16, 1234
p = argparse.ArgumentParser()
p.add_argument("ckpt"); p.add_argument("out")
p.add_argument("--kill-after-commit", type=int); p.add_argument("--die-in-commit", type=int)
p.add_argument("--ready-file"); p.add_argument("--step-sleep", type=float, default=0.0)
a = p.parse_args()

if a.die_in_commit is not None:  # SIGKILL inside Orbax's commit, before the rename
  from orbax.checkpoint._src.path import async_path
  rename = async_path.rename
  async def dying_rename(src, dst):
    if os.path.basename(str(dst)) == str(a.die_in_commit):
      os.kill(os.getpid(), signal.SIGKILL)
    return await rename(src, dst)
  async_path.rename = dying_rename

def batch_at(position):  # the data "iterator": a pure function of its position
  g = np.random.default_rng([SEED, position])
  return {"tokens": g.integers(0, 128, (BATCH, SEQ), dtype=np.int32),
          "mask": np.ones((BATCH, SEQ), bool),
          "target": g.normal(size=(BATCH,)).astype(np.float32)}

cfg = C.tiny_llama(num_reward_heads=1)
mesh = P.make_mesh((2, 2, 2))
model = P.init_sharded(lambda: T.Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
graphdef, params = nnx.split(model, nnx.Param)[0], nnx.state(model, nnx.Param)
tx = optax.adamw(1e-3)
state = (params, tx.init(params))
shardings = P.tree_shardings(state, mesh)
state = jax.device_put(state, shardings)  # optax's count starts off-mesh: one compile only

def step_fn(state, batch):
  params, opt = state
  def loss(p):
    m = nnx.merge(graphdef, p)
    h, _ = m(batch["tokens"], batch["mask"])
    r = m.rewards(h, batch["mask"])[..., 0]
    return jnp.mean((r - batch["target"] - 0.01 * batch["noise"]) ** 2)
  l, g = jax.value_and_grad(loss)(params)
  upd, opt = tx.update(g, opt, params)
  return (optax.apply_updates(params, upd), opt), {"loss": l}

step = P.compile_step(step_fn, mesh, shardings, {"tokens": 2, "mask": 2, "target": 1, "noise": 1})
ckpt = ck.Checkpointer(a.ckpt, keep=2, interval=INTERVAL,
                       provenance=ck.provenance({"steps": STEPS}, data_hash="seed-1234"))
start, position, key = 0, 0, jax.random.key(SEED)
restored = ckpt.restore_latest(ck.abstract_like(state, shardings))
if restored is not None:
  start, state, extra = restored
  position = extra["data_position"]
  key = jax.random.wrap_key_data(jnp.asarray(extra["rng_key_data"], jnp.uint32))
used, preempted_at = [], None
with ckpt.install_sigterm_handler():
  for s in range(start + 1, STEPS + 1):
    key, sub = jax.random.split(key)
    batch = dict(batch_at(position), noise=np.asarray(jax.random.normal(sub, (BATCH,))))
    state, metrics = step(state, P.shard_batch(batch, mesh))
    used.append(position)
    if s == 3 and a.ready_file:  # compiled and running: the test may send SIGTERM now
      open(a.ready_file, "w").close()
    position += 1
    extra = {"data_position": position, "rng_key_data": jax.random.key_data(key)}
    ckpt.save(s, state, extra)
    if s == a.kill_after_commit:
      ckpt.wait()
      os.kill(os.getpid(), signal.SIGKILL)
    if ckpt.preempted:
      ckpt.save(s, state, extra, force=True)
      preempted_at = s
      break
    time.sleep(a.step_sleep)
ckpt.wait()
ckpt.close()
leaves = [np.asarray(x).tolist() for x in jax.tree.leaves(state)]
json.dump({"start": start, "positions": used, "preempted_at": preempted_at,
           "final_loss": float(metrics["loss"]), "leaves": leaves}, open(a.out, "w"))
'''


class Runner:
  def __init__(self, root: pathlib.Path):
    self.root = root
    self.script = root / "train_script.py"
    self.script.write_text(SCRIPT)
    self.env = dict(os.environ, PYTHONPATH=str(REPO),
                    JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    self.n = 0

  def popen(self, ckpt_dir, *flags):
    self.n += 1
    out = self.root / f"out{self.n}.json"
    proc = subprocess.Popen([sys.executable, str(self.script), str(ckpt_dir), str(out),
                             *map(str, flags)], env=self.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, out

  def run(self, ckpt_dir, *flags, expect_rc=0):
    proc, out = self.popen(ckpt_dir, *flags)
    log = proc.communicate(timeout=180)[0]
    assert proc.returncode == expect_rc, log[-3000:]
    return json.loads(out.read_text()) if expect_rc == 0 else None


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
  return Runner(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="module")
def straight(runner):
  out = runner.run(runner.root / "straight")
  assert out["start"] == 0 and out["positions"] == list(range(40))
  return out


def _assert_same_params(a, b):
  assert len(a["leaves"]) == len(b["leaves"])
  for x, y in zip(a["leaves"], b["leaves"]):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_kill_and_resume_is_bit_identical(runner, straight):
  d = runner.root / "killed"
  # SIGKILL right after the step-20 checkpoint is committed.
  runner.run(d, "--kill-after-commit", 20, expect_rc=-signal.SIGKILL)
  assert sorted(p.name for p in d.iterdir() if p.name.isdigit()) == ["10", "20"]
  # Resume, and SIGKILL inside the step-30 commit, before Orbax's rename.
  runner.run(d, "--die-in-commit", 30, expect_rc=-signal.SIGKILL)
  names = sorted(p.name for p in d.iterdir())
  assert "30" not in names and any(n.startswith("30.orbax-checkpoint-tmp") for n in names)
  assert (d / [n for n in names if n.startswith("30.")][0] / "state").exists()
  # The half-written step is invisible: resume restarts from 20 and finishes.
  final = runner.run(d)
  assert final["start"] == 20
  assert final["positions"] == straight["positions"][20:]
  assert final["final_loss"] == straight["final_loss"]
  _assert_same_params(final, straight)
  assert sorted(p.name for p in d.iterdir() if p.name[0].isdigit()) == ["30", "40"]


def test_sigterm_saves_exits_cleanly_and_resumes(runner, straight):
  d = runner.root / "preempted"
  ready = runner.root / "ready"
  proc, out = runner.popen(d, "--ready-file", ready, "--step-sleep", 0.2)
  deadline = time.time() + 120
  while not ready.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  log = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, log[-3000:]
  first = json.loads(out.read_text())
  stop = first["preempted_at"]
  assert stop is not None and 3 <= stop < 40
  assert first["positions"] == list(range(stop))
  with ck.Checkpointer(d) as ckpt:
    assert ckpt.all_steps()[-1] == stop
  final = runner.run(d)
  assert final["start"] == stop and final["positions"] == list(range(stop, 40))
  _assert_same_params(final, straight)
