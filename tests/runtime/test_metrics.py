"""MetricsWriter: the workdir lock (live, stale, another host), dropping rows after a
resume point, and only the primary process writing."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from rmjax.runtime import checkpoint, metrics


def _lock(workdir):
  return workdir / metrics.LOCK_FILE


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid  # reaped: no process has this id now (until the OS reuses it)


def test_the_lock_holds_pid_and_host_and_is_released_at_close(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path))
  held = json.loads(_lock(tmp_path).read_text())
  assert held == {"pid": os.getpid(), "host": socket.gethostname()}
  writer.close()
  assert not _lock(tmp_path).exists()


def test_a_live_lock_is_a_one_line_error(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path))
  try:
    with pytest.raises(metrics.WorkdirInUse) as err:
      metrics.MetricsWriter(str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message
    assert str(_lock(tmp_path)) in message
  finally:
    writer.close()


def test_a_live_lock_of_another_process_is_an_error(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _lock(tmp_path).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
    with pytest.raises(metrics.WorkdirInUse, match=f"in use by pid {holder.pid} on "):
      metrics.MetricsWriter(str(tmp_path))
  finally:
    holder.kill()
    holder.wait()


def test_a_lock_from_another_host_is_not_taken(tmp_path):
  _lock(tmp_path).write_text(json.dumps({"pid": 1, "host": "some-other-host"}))
  with pytest.raises(metrics.WorkdirInUse, match="in use by pid 1 on some-other-host"):
    metrics.MetricsWriter(str(tmp_path))


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
  pid = _dead_pid()
  _lock(tmp_path).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
  with pytest.warns(UserWarning, match=f"stale lock.*pid {pid}"):
    writer = metrics.MetricsWriter(str(tmp_path))
  assert json.loads(_lock(tmp_path).read_text())["pid"] == os.getpid()
  writer.close()


def test_drop_after_keeps_rows_up_to_the_resume_point(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path))
  for step in (1, 2, 3, 4):
    writer.write(step, "train", {"loss": step})
  writer.write(4, "eval", {"accuracy": 0.5})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 5, "split": "tr')  # a row cut short by a kill
  writer = metrics.MetricsWriter(str(tmp_path))
  writer.drop_after(2)
  writer.write(3, "train", {"loss": 30.0})
  writer.close()
  rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert [(r["step"], r["split"], r.get("loss")) for r in rows] == [
      (1, "train", 1.0), (2, "train", 2.0), (3, "train", 30.0)]


def test_only_the_primary_process_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(metrics, "is_primary", lambda: False)
  writer = metrics.MetricsWriter(str(tmp_path / "w"))
  writer.drop_after(0)
  writer.write(1, "train", {"loss": 1.0})
  writer.close()
  assert not (tmp_path / "w").exists()  # no lock, no rows, no TensorBoard files


def test_a_refused_second_run_leaves_the_first_runs_unfinished_save_alone(tmp_path):
  """A program makes its Checkpointer before its writer; Orbax deletes unfinished saves
  when its manager starts, so the Checkpointer must not start it before the lock."""
  unfinished = tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp-1733300000"
  unfinished.mkdir(parents=True)
  first = metrics.MetricsWriter(str(tmp_path))
  try:
    checkpointer = checkpoint.Checkpointer(tmp_path / "checkpoints")
    with pytest.raises(metrics.WorkdirInUse, match="is in use by"):
      metrics.MetricsWriter(str(tmp_path))
    time.sleep(1.0)  # Orbax's clean-up runs in the background once its manager starts
    checkpointer.close()
    assert unfinished.is_dir()
    checkpoint.Checkpointer(tmp_path / "elsewhere").close()
    assert not (tmp_path / "elsewhere").exists()  # a Checkpointer alone touches nothing
  finally:
    first.close()
