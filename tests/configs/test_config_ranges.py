"""``rmjax.configs.ranges``: every numeric field has a range, and the CLI applies it before
anything is written."""

import os
import subprocess
import sys

import pytest
from test_config_fields import ROOT, _config

from rmjax import cli
from rmjax.configs import describe, ranges
from rmjax.configs import train_rm as train_rm_config


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_numeric_field_has_a_range(command):
  numeric = [name for name, value in describe.leaves(_config(command))
             if isinstance(value, (int, float)) and not isinstance(value, bool)]
  missing = [n for n in numeric if n not in ranges.RANGES and n not in ranges.UNBOUNDED]
  assert not missing, f"{command}: numeric fields without a range in configs/ranges.py: {missing}"


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_embedded_defaults_are_in_range(command):
  assert ranges.check(_config(command)) == []


def test_range_bounds_and_sentinels():
  assert 0.0 in ranges.SMOOTHING and 0.49 in ranges.SMOOTHING and 0.5 not in ranges.SMOOTHING
  assert -1 in ranges.MESH_AXIS and 0 not in ranges.MESH_AXIS and 3 in ranges.MESH_AXIS
  assert 1.0 in ranges.TOP_P and 0.0 not in ranges.TOP_P
  assert float("nan") not in ranges.POSITIVE and True not in ranges.AT_LEAST_1
  folds = ranges.RANGES["ensemble.folds"]
  assert 0 in folds and 1 not in folds and 2 in folds
  assert folds.describe() == "0 or >= 2" and ranges.SMOOTHING.describe() == "in [0, 0.5)"


def test_check_names_field_value_and_range():
  config = train_rm_config.get_config()
  config.loss.label_smoothing = 1.5
  config.optim.learning_rate = 0.0
  assert ranges.check(config) == ["loss.label_smoothing=1.5 must be in [0, 0.5)",
                                  "optim.learning_rate=0.0 must be > 0"]


def _run(*args, cwd):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "rmjax.cli", *args], capture_output=True,
                        text=True, env=env, timeout=120, cwd=cwd)


@pytest.mark.parametrize("override, named", [
    ("train.batch_size=0", "train.batch_size=0 must be >= 1"),
    ("optim.grad_accum=0", "optim.grad_accum=0 must be >= 1"),
    ("loss.label_smoothing=1.5", "loss.label_smoothing=1.5 must be in [0, 0.5)"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints=0 must be >= 1")])
def test_out_of_range_exits_2_naming_the_field_and_writes_nothing(tmp_path, override, named):
  workdir = tmp_path / "run"
  result = _run("train-rm", f"--config.{override}", f"--config.train.workdir={workdir}",
                cwd=tmp_path)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip() == f"rmjax train-rm: {named}"
  assert not workdir.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("command, override", [
    ("rl", "rl.top_p=0"), ("score", "batch_size=0"), ("eval-rm", "max_len=-3"),
    ("score-pairs", "batch_size=-1"), ("export-hf", "step=-2"), ("demo", "temperature=0")])
def test_every_command_checks_ranges(tmp_path, command, override):
  result = _run(command, f"--config.{override}", cwd=tmp_path)
  assert result.returncode == 2 and override.split("=")[0] in result.stderr, result.stderr
  assert "Traceback" not in result.stderr


EXPERIMENT_CONFIGS = sorted(
    f for f in os.listdir(os.path.join(ROOT, "experiments", "configs")) if f.endswith(".py"))


@pytest.mark.parametrize("name", EXPERIMENT_CONFIGS)
def test_experiment_configs_are_in_range(name):
  """What ``--config=experiments/configs/<name>`` gives the CLI passes its range check."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(
      f"experiment_config_{name[:-3]}", os.path.join(ROOT, "experiments", "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert ranges.check(module.get_config()) == []
