"""loop.run with a tiny fake step (pure jnp, no model): the finiteness stop keeps only finite
checkpoints, SIGTERM saves then raises Preempted, a rerun resumes exactly, and a resumed
run's metrics.jsonl holds each step once."""

import io
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import SingleDeviceSharding
from orbax.checkpoint import PyTreeCheckpointer

from rmjax.runtime import loop
from rmjax.runtime.checkpoint import Checkpointer, abstract_like
from rmjax.runtime.metrics import MetricsWriter, Progress

STEPS = 10


def _state():
  sharding = SingleDeviceSharding(jax.devices()[0])
  state = {"w": jnp.arange(4.0), "step": jnp.zeros((), jnp.int32)}
  return jax.device_put(state, sharding), {"w": sharding, "step": sharding}


def _batch(step):
  return np.full((4,), step + 1.0, np.float32)  # a pure function of the step index


def _make_step(nan_at: int | None = None):
  """w <- 0.5 w + batch; after step ``nan_at`` (1-based) w is NaN. The loss stays finite,
  so only the FINITE flag over the updated parameters can stop the run."""
  @jax.jit
  def step_fn(state, batch):
    step = state["step"] + 1
    w = 0.5 * state["w"] + batch
    if nan_at is not None:
      w = jnp.where(step == nan_at, jnp.nan, w)
    new = {"w": w, "step": step}
    return new, {"loss": jnp.sum(batch), loop.FINITE: loop.all_finite(new)}
  return step_fn


def _run(workdir, step_fn, *, interval=1, batches=_batch, steps=STEPS, log_every=1):
  state, shardings = _state()
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=None,
                              interval=interval)
  return loop.run(state=state, step_fn=step_fn, batches=batches, steps=steps,
                  checkpointer=checkpointer, writer=MetricsWriter(str(workdir)),
                  progress=Progress(0, steps, stream=io.StringIO()), log_every=log_every,
                  restore_target=abstract_like(state, shardings))


def _restored(workdir):
  state, shardings = _state()
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    steps = ckpt.all_steps()
    return steps, ckpt.restore_latest(abstract_like(state, shardings))


def _rows(workdir, split="train"):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def test_nan_parameters_stop_the_run_before_they_are_saved(tmp_path):
  with pytest.raises(loop.NonFiniteError, match=r"parameters after step 3\b"):
    _run(tmp_path, _make_step(nan_at=3))
  steps, (latest, state, _) = _restored(tmp_path)
  assert steps == [1, 2] and latest == 2 < 3
  assert int(state["step"]) == 2 and np.isfinite(np.asarray(state["w"])).all()
  for step in steps:  # every step on disk holds finite parameters
    stored = PyTreeCheckpointer().restore(tmp_path / "checkpoints" / str(step) / "state")
    assert int(stored["step"]) == step and np.isfinite(stored["w"]).all(), step
  assert [r["step"] for r in _rows(tmp_path)] == [1, 2]  # step 3 was never logged


def test_sigterm_saves_raises_preempted_and_resumes_exactly(tmp_path):
  straight = _run(tmp_path / "straight", _make_step())
  assert straight.start == 0

  def batches(step):
    if step == 4:  # during step 5 (1-based): the handler sets the flag, the loop saves
      os.kill(os.getpid(), signal.SIGTERM)
    return _batch(step)

  workdir = tmp_path / "preempted"
  with pytest.raises(loop.Preempted) as stopped:
    _run(workdir, _make_step(), interval=4, batches=batches)
  assert stopped.value.step == 5
  steps, (latest, state, extra) = _restored(workdir)
  assert steps == [4, 5] and latest == 5 and extra == {"data_step": 5}
  assert int(state["step"]) == 5

  resumed = _run(workdir, _make_step(), interval=4)
  assert resumed.start == 5
  np.testing.assert_array_equal(np.asarray(resumed.state["w"]), np.asarray(straight.state["w"]))
  assert [r["step"] for r in _rows(workdir)] == list(range(1, STEPS + 1))
  assert _rows(workdir) == _rows(tmp_path / "straight")


class _Crash(Exception):
  pass


def test_resumed_run_drops_metrics_rows_after_the_resume_point(tmp_path):
  def crashing(step):
    if step == 6:  # steps 5 and 6 are logged, the last checkpoint is step 4
      raise _Crash()
    return _batch(step)

  with pytest.raises(_Crash):
    _run(tmp_path, _make_step(), interval=4, batches=crashing)
  assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3, 4, 5, 6]
  result = _run(tmp_path, _make_step(), interval=4)
  assert result.start == 4
  assert [r["step"] for r in _rows(tmp_path)] == list(range(1, STEPS + 1))


def test_a_refused_resume_releases_the_workdir(tmp_path):
  _run(tmp_path, _make_step(), steps=2)
  state = jax.device_put({"w": jnp.zeros(5), "step": jnp.zeros((), jnp.int32)},
                         SingleDeviceSharding(jax.devices()[0]))
  with pytest.raises(ValueError, match=r"w: stored \(4,\) vs expected \(5,\)"):
    loop.run(state=state, step_fn=_make_step(), batches=_batch, steps=4,
             checkpointer=Checkpointer(tmp_path / "checkpoints"),
             writer=MetricsWriter(str(tmp_path)),
             progress=Progress(0, 4, stream=io.StringIO()),
             restore_target=abstract_like(state, jax.tree.map(lambda x: x.sharding, state)))
  assert not (tmp_path / "rmjax.lock").exists()
  assert [r["step"] for r in _rows(tmp_path)] == [1, 2]  # nothing dropped either


def test_progress_every_prints_its_own_steps_while_every_step_is_logged(tmp_path):
  """PPO logs every iteration but shows progress every ``train.log_every``."""
  state, shardings = _state()
  stream = io.StringIO()
  loop.run(state=state, step_fn=_make_step(), batches=_batch, steps=STEPS,
           checkpointer=Checkpointer(os.path.join(tmp_path, "checkpoints"), keep=None),
           writer=MetricsWriter(str(tmp_path)), progress=Progress(0, STEPS, stream=stream),
           log_every=1, progress_every=4)
  shown = [int(line.split()[1].split("/")[0]) for line in stream.getvalue().splitlines()]
  assert shown == [4, 8, STEPS]
  assert [row["step"] for row in _rows(tmp_path)] == list(range(1, STEPS + 1))


def test_per_prompt_items_are_written_every_step_once_each_across_a_resume(tmp_path):
  """Values under loop.ITEMS go to per_prompt.jsonl as they are, every step even between
  log rows, never into metrics.jsonl; an eval's too; a resume rewrites each step once."""
  plain = _make_step()

  def step_fn(state, batch):
    new, metrics = plain(state, batch)
    return new, {**metrics, loop.ITEMS: {"gold": batch[:3] * 2}}

  def crashing(step):
    if step == 6:
      raise _Crash()
    return _batch(step)

  def run(batches):
    state, shardings = _state()
    return loop.run(
        state=state, step_fn=step_fn, batches=batches, steps=STEPS,
        checkpointer=Checkpointer(os.path.join(tmp_path, "checkpoints"), keep=None,
                                  interval=4),
        writer=MetricsWriter(str(tmp_path)), progress=Progress(0, STEPS, stream=io.StringIO()),
        log_every=3, eval_every=5,
        evaluate=lambda s: {"w": float(s["w"][0]), loop.ITEMS: {"w": np.asarray(s["w"])}},
        restore_target=abstract_like(state, shardings))

  with pytest.raises(_Crash):
    run(crashing)
  result = run(_batch)
  assert result.start == 4 and loop.ITEMS not in result.eval
  with open(tmp_path / "per_prompt.jsonl", encoding="utf-8") as f:
    items = [json.loads(line) for line in f]
  train = [r for r in items if r["split"] == "train"]
  assert [r["step"] for r in train] == list(range(1, STEPS + 1))
  assert all(r["gold"] == [2.0 * r["step"]] * 3 for r in train)  # batch of step i is i + 1
  evals = [r for r in items if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [5, 10] and len(evals[0]["w"]) == 4
  assert all(loop.ITEMS not in r for r in _rows(tmp_path) + _rows(tmp_path, "eval"))
