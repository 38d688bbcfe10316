"""The CLI runs a command end to end with config overrides, in a fresh process."""

import os
import subprocess
import sys

from rmjax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, env=None):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             **(env or {}))
  return subprocess.run([sys.executable, "-m", "rmjax.cli", *args], capture_output=True,
                        text=True, env=env, timeout=300)


def test_demo_runs_on_a_sharded_mesh():
  result = _run("demo", "--config.model=tiny_llama", "--config.batch=8",
                "--config.prompt_len=8", "--config.new_tokens=4", "--config.mesh.fsdp=2",
                "--config.mesh.tensor=2")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "mesh {'ensemble': 1, 'data': 2, 'fsdp': 2, 'tensor': 2}" in result.stdout
  assert "sampled 8 x 4 tokens" in result.stdout


def test_unknown_command_names_the_commands():
  result = _run("nonsense")
  assert result.returncode == 2 and "unknown command 'nonsense'" in result.stderr
  assert "commands: demo" in result.stderr


def test_batch_not_dividing_mesh_is_a_clear_error():
  result = _run("demo", "--config.model=tiny_llama", "--config.batch=6",
                "--config.prompt_len=4", "--config.new_tokens=2", "--config.mesh.fsdp=2")
  assert result.returncode != 0
  assert "6 rows" in result.stderr and "data-parallel size 8" in result.stderr


def test_mesh_not_matching_devices_is_a_clear_error():
  result = _run("demo", "--config.model=tiny_llama", "--config.mesh.data=4")
  assert result.returncode != 0
  assert "needs 4 devices but 8 are available" in result.stderr


def test_unknown_config_field_is_named():
  result = _run("train-rm", "--config.train.stepz=5")
  assert result.returncode != 0
  assert "stepz" in result.stderr and 'Did you mean "steps"' in result.stderr


def test_ensemble_flags_reach_the_trainer():
  result = _run("train-rm", "--config.ensemble.k=0")
  assert result.returncode == 2 and "ensemble.k=0 must be >= 1" in result.stderr
  result = _run("train-rm", "--config.ensemble.k=3", "--config.mesh.data=4",
                "--config.mesh.ensemble=2")
  assert result.returncode != 0
  assert "ensemble.k=3 is not divisible by mesh.ensemble=2" in result.stderr


def test_train_rm_main_job_reports_held_out_and_gold(tmp_path):
  result = _run("train-rm", f"--config.train.workdir={tmp_path}", "--config.train.steps=20",
                "--config.train.eval_every=20", "--config.data.synthetic.num_train_pairs=256",
                "--config.data.synthetic.num_eval_pairs=64")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "held-out: accuracy" in result.stdout and "gold_agreement" in result.stdout
  assert (tmp_path / "training_curves.png").exists()
  assert (tmp_path / "checkpoints" / "20").is_dir()


# ---- user errors: one line, exit 2; internal errors keep their traceback ----

def test_user_error_is_one_line_with_status_2_and_no_workdir(tmp_path):
  workdir = tmp_path / "run"
  result = _run("train-rm", "--config.data.source=bogus", f"--config.train.workdir={workdir}")
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "rmjax train-rm: data.source='bogus' is not one of ('synthetic', 'files')")
  assert not workdir.exists()


def test_debug_flag_and_env_show_the_traceback(tmp_path):
  args = ("train-rm", "--config.data.source=bogus", f"--config.train.workdir={tmp_path}")
  for result in (_run(*args, "--debug"), _run(*args, env={"RMJAX_DEBUG": "1"})):
    assert result.returncode not in (0, 2)
    assert "Traceback" in result.stderr and "ValueError: data.source='bogus'" in result.stderr


def test_missing_file_is_a_user_error(tmp_path):
  missing = tmp_path / "absent.jsonl"
  result = _run("train-rm", "--config.data.source=files", "--config.data.files.tokenizer=gpt2-bpe",
                f"--config.data.files.paths=('{missing}',)",
                f"--config.data.files.data_dir={tmp_path / 'data'}",
                f"--config.train.workdir={tmp_path / 'run'}")
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip() == f"rmjax train-rm: No such file or directory: {missing}"


def test_bad_override_exits_2():
  result = _run("train-rm", "--config.train.steps=many")
  assert result.returncode == 2 and "bad config override" in result.stderr
  assert "Traceback" not in result.stderr


def _raised(fn):
  try:
    fn()
  except Exception as error:  # noqa: BLE001 (any error is what is classified)
    return error
  raise AssertionError("nothing was raised")


def test_is_user_error_tells_rmjax_checks_from_library_errors(tmp_path):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from rmjax.data import readers, schema, tfds_builder
  from rmjax.objectives import bt
  from rmjax.runtime import loop

  pair = schema.PreferencePair([1], [2], [3], source="f.jsonl:3")
  # Raised by an rmjax check: user errors.
  assert cli.is_user_error(_raised(lambda: readers.read_pairs("x.jsonl", "bogus")))
  assert cli.is_user_error(_raised(lambda: loop.check_finite({"loss": np.nan}, ("loss",), 3)))
  assert cli.is_user_error(_raised(lambda: readers.read_pairs(tmp_path / "absent.jsonl")))
  # Raised inside numpy (called from rmjax code, not by an rmjax check) or jax: internal.
  assert not cli.is_user_error(_raised(lambda: tfds_builder._int32(["x"], pair, "chosen")))
  assert not cli.is_user_error(_raised(lambda: jnp.ones(3) + jnp.ones(4)))
  # An rmjax check inside traced code (JAX filters the frames): a bug, not the user's.
  traced = jax.jit(bt.bradley_terry_loss)
  assert not cli.is_user_error(_raised(lambda: traced(jnp.ones(3), jnp.ones(2))))
  assert not cli.is_user_error(_raised(lambda: {}["k"]))


# ---- SIGTERM: save, one line, exit 143; a rerun resumes ----

def test_sigterm_saves_exits_143_and_the_rerun_resumes(tmp_path):
  import re
  import signal
  import time

  args = ["train-rm", f"--config.train.workdir={tmp_path}", "--config.train.save_every=5",
          "--config.train.log_every=5", "--config.train.batch_size=8",
          "--config.data.synthetic.num_train_pairs=64", "--config.data.synthetic.num_eval_pairs=16",
          "--config.model.n_layers=1"]
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen([sys.executable, "-m", "rmjax.cli", *args,
                           "--config.train.steps=100000", "--config.train.eval_every=100000"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  checkpoints = tmp_path / "checkpoints"
  deadline = time.time() + 240
  while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 143, stderr[-2000:]
  line = stderr.strip().splitlines()[-1]
  match = re.fullmatch(r"rmjax train-rm: stopped by SIGTERM after step (\d+) \(saved; rerun to "
                       r"resume\)", line)
  assert match, line
  step = int(match.group(1))
  assert (checkpoints / str(step)).is_dir()
  rerun = _run(*args, f"--config.train.steps={step + 5}", f"--config.train.eval_every={step + 5}")
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert f"resumed from step {step} in {tmp_path}" in rerun.stdout
  assert (checkpoints / str(step + 5)).is_dir()
  # A stale workdir (another model in it) is a user error too: one line, status 2.
  stale = _run(*args, f"--config.train.steps={step + 10}", "--config.model.n_layers=2")
  assert stale.returncode == 2, stale.stderr[-2000:]
  assert "Traceback" not in stale.stderr and "model.n_layers" in stale.stderr
  assert stale.stderr.strip().splitlines()[-1].startswith("rmjax train-rm: ")


def test_train_rm_without_eval_metrics_says_why(monkeypatch, capsys):
  from rmjax.commands import train_rm
  from rmjax.configs import train_rm as train_rm_config

  monkeypatch.setattr(train_rm.rm_trainer, "train",
                      lambda config: {"eval": {}, "workdir": "runs/x", "plot": "curves.png"})
  config = train_rm_config.get_config()
  train_rm.run(config)
  first = capsys.readouterr().out.splitlines()[0]
  assert first == ("held-out: not evaluated: runs/x had already reached train.steps=600, so no "
                   "step ran (raise train.steps to train further)")
