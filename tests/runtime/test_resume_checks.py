"""What ``Checkpointer.restore_latest`` checks before it resumes: the checkpoint format,
the run (config and data hash), the stored shapes; a corrupted latest step falls back to
the one before; ``keep`` must keep something."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import SingleDeviceSharding

from rmjax.runtime import checkpoint as ck
from rmjax.runtime import run_identity


def _sharding():
  return SingleDeviceSharding(jax.devices()[0])


def _state(value=1.0, n=8):
  return jax.device_put({"w": jnp.full((n,), value), "b": {"c": jnp.zeros((2, 3))}},
                        _sharding())


def _target(state):
  return ck.abstract_like(state, jax.tree.map(lambda _: _sharding(), state))


def _config(**train):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(d_model=64, n_layers=2))
  c.optim = ml_collections.ConfigDict(dict(learning_rate=1e-3))
  c.train = ml_collections.ConfigDict(dict(
      steps=100, batch_size=8, log_every=10, eval_every=50, save_every=10,
      keep_checkpoints=2, workdir="runs/a", checkpoint_dir=""))
  c.train.update(train)
  return c


def _save(directory, steps, provenance=None, keep=3):
  with ck.Checkpointer(directory, keep=keep, provenance=provenance) as ckpt:
    for step in steps:
      ckpt.save(step, _state(float(step)), {"data_step": step}, force=True)
    ckpt.wait()


def _restore(directory, provenance=None, state=None):
  with ck.Checkpointer(directory, provenance=provenance) as ckpt:
    return ckpt.restore_latest(_target(_state() if state is None else state))


def _provenance_file(directory, step) -> pathlib.Path:
  return pathlib.Path(directory) / str(step) / "provenance" / "metadata"


# --- 1. format and run ---------------------------------------------------------------


def test_format_version_is_stored_and_other_formats_are_refused(tmp_path):
  prov = ck.provenance(_config(), "data-1")
  assert prov["format"] == ck.FORMAT_VERSION == 2
  _save(tmp_path, [1], prov)
  path = _provenance_file(tmp_path, 1)
  stored = json.loads(path.read_text())
  assert stored["format"] == 2
  stored["format"] = 3
  path.write_text(json.dumps(stored))
  with pytest.raises(ValueError, match=(rf"^{tmp_path} holds checkpoints of format 3; this "
                                        r"rmjax writes 2: start a new workdir$")):
    _restore(tmp_path, prov)


def test_unversioned_checkpoints_are_read_as_format_1(tmp_path):
  prov = ck.provenance(_config(), "data-1")
  _save(tmp_path, [1], prov)
  path = _provenance_file(tmp_path, 1)
  stored = json.loads(path.read_text())
  del stored["format"]  # what this module wrote before it recorded a format
  path.write_text(json.dumps(stored))
  step, state, _ = _restore(tmp_path, prov)
  assert step == 1 and float(state["w"][0]) == 1.0


def test_an_older_format_of_another_config_says_it_is_older(tmp_path):
  """A workdir of the previous release whose config lacks this release's fields is refused
  with a line that says the checkpoints are older, and names the fields."""
  _save(tmp_path, [1], ck.provenance(_config(), "data-1"))
  path = _provenance_file(tmp_path, 1)
  stored = json.loads(path.read_text())
  del stored["format"]
  del stored["config"]["train"]["batch_size"]  # a field the older release did not have
  path.write_text(json.dumps(stored))
  with pytest.raises(ValueError, match=r"written by an older rmjax \(checkpoint format 1\) "
                                       r"for another config: train.batch_size: <absent> -> "):
    _restore(tmp_path, ck.provenance(_config(), "data-1"))


def test_a_changed_run_is_refused_naming_the_fields(tmp_path):
  _save(tmp_path, [1], ck.provenance(_config(), "data-1"))
  now = _config()
  now.model.d_model = 128
  now.optim.learning_rate = 3e-4
  now.train.batch_size = 16
  now.train.steps = 500  # harmless: these three alone would resume
  now.dry_run = ml_collections.ConfigDict(dict(devices=64))
  now.loss = ml_collections.ConfigDict(dict(label_smoothing=0.1))  # a new section
  with pytest.raises(ValueError) as err:
    _restore(tmp_path, ck.provenance(now, "data-2"))
  message = str(err.value)
  assert "\n" not in message and str(tmp_path) in message
  for part in ("model.d_model: 64 -> 128", "optim.learning_rate: 0.001 -> 0.0003",
               "train.batch_size: 8 -> 16", "loss.label_smoothing: <absent> -> 0.1",
               "data_hash: 'data-1' -> 'data-2'"):
    assert part in message, (part, message)
  assert "train.steps" not in message and "dry_run" not in message


def test_fields_that_do_not_change_the_run_may_differ(tmp_path):
  _save(tmp_path, [1], ck.provenance(_config(), "data-1"))
  now = _config(steps=1000, log_every=1, eval_every=7, save_every=3, keep_checkpoints=5,
                workdir="elsewhere", checkpoint_dir="gs://b/c")
  now.dry_run = ml_collections.ConfigDict(dict(devices=64))
  now.distributed = ml_collections.ConfigDict(dict(coordinator="host:1"))
  step, _, _ = _restore(tmp_path, ck.provenance(now, "data-1"))
  assert step == 1
  for name in ("train.steps", "train.log_every", "train.eval_every", "train.save_every",
               "train.keep_checkpoints", "train.workdir", "train.checkpoint_dir"):
    assert run_identity.harmless(name), name
  assert run_identity.harmless("dry_run.devices") and run_identity.harmless("distributed.coordinator")
  assert not run_identity.harmless("train.batch_size") and not run_identity.harmless("model.d_model")


# --- 2. keep ----------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_below_one_is_refused(tmp_path, keep):
  with pytest.raises(ValueError, match=rf"^train.keep_checkpoints={keep} must be >= 1 "):
    ck.Checkpointer(tmp_path, keep=keep)
  assert not any(tmp_path.iterdir())


def test_keep_none_keeps_every_step(tmp_path):
  _save(tmp_path, [1, 2, 3, 4], keep=None)
  with ck.Checkpointer(tmp_path) as ckpt:
    assert ckpt.all_steps() == [1, 2, 3, 4]


# --- 3. corrupted steps -------------------------------------------------------------


def _array_files(directory, step):
  return [p for p in (pathlib.Path(directory) / str(step) / "state").rglob("*")
          if p.is_file() and p.parent.name == "d"]


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_corrupted_latest_step_falls_back_to_the_one_before(tmp_path, damage):
  _save(tmp_path, [1, 2])
  files = _array_files(tmp_path, 2)
  assert files
  for f in files:
    if damage == "truncate":
      os.truncate(f, f.stat().st_size // 2)
    else:
      f.unlink()
  with ck.Checkpointer(tmp_path, keep=3) as ckpt:
    with pytest.warns(UserWarning, match=rf"checkpoint step 2 in {tmp_path} is unreadable"):
      step, state, extra = ckpt.restore_latest(_target(_state()))
    assert (step, extra) == (1, {"data_step": 1})
    np.testing.assert_array_equal(np.asarray(state["w"]), np.full(8, 1.0))
    # The run redoes step 2: its save replaces the unreadable one.
    assert ckpt.save(2, _state(2.0), {"data_step": 2}, force=True)
    ckpt.wait()
  step, state, _ = _restore(tmp_path)
  assert step == 2 and float(state["w"][0]) == 2.0


def test_no_readable_step_is_a_clear_error(tmp_path):
  _save(tmp_path, [1, 2])
  for step in (1, 2):
    for f in _array_files(tmp_path, step):
      f.unlink()
  with pytest.warns(UserWarning), pytest.raises(
      ck.NoReadableCheckpoint, match=rf"^no readable checkpoint in {tmp_path}: steps \[2, 1\]"):
    _restore(tmp_path)


# --- 4. shapes ----------------------------------------------------------------------


def test_other_shapes_are_named_before_orbax_reads(tmp_path):
  _save(tmp_path, [1])
  other = {"w": jnp.zeros((16,)), "b": {"c": jnp.zeros((2, 3))}, "extra_leaf": jnp.zeros(2)}
  with pytest.raises(ValueError) as err:
    _restore(tmp_path, state=jax.device_put(other, _sharding()))
  message = str(err.value)
  assert "\n" not in message and str(tmp_path / "1") in message
  assert "w: stored (8,) vs expected (16,)" in message
  assert "extra_leaf: not stored vs expected (2,)" in message
  assert "b.c" not in message

  fewer = jax.device_put({"w": jnp.zeros((8,))}, _sharding())
  with pytest.raises(ValueError, match=r"b\.c: stored \(2, 3\) vs not expected"):
    _restore(tmp_path, state=fewer)
