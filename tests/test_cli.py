"""The CLI runs a command end to end with config overrides, in a fresh process."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
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
  assert result.returncode != 0
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
