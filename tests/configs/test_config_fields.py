"""Every field of every embedded config has a one-line meaning, shown by ``--help``."""

import os
import subprocess
import sys

import pytest

from rmjax import cli
from rmjax.configs import describe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(command):
  module = __import__(f"rmjax.configs.{command.replace('-', '_')}", fromlist=["get_config"])
  return module.get_config()


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_field_has_a_meaning(command):
  names = [name for name, _ in describe.leaves(_config(command))]
  meanings = describe.meanings(command)
  missing = [n for n in names if n not in meanings]
  assert not missing, f"{command}: fields without a meaning in its FIELDS table: {missing}"
  blank = [n for n in names if not meanings[n].strip() or "\n" in meanings[n]]
  assert not blank, f"{command}: meanings must be one non-empty line: {blank}"


@pytest.mark.parametrize("command", [c for c in cli.COMMANDS if c != "dry-run"])
def test_no_meaning_for_a_field_that_does_not_exist(command):
  names = {name for name, _ in describe.leaves(_config(command))}
  stale = sorted(set(describe.meanings(command)) - names)
  assert not stale, f"{command}: FIELDS names fields the config lacks: {stale}"


def test_leaves_are_dotted_and_stop_at_tuples():
  config = _config("train-rm")
  leaves = dict(describe.leaves(config))
  assert leaves["train.batch_size"] == 32 and leaves["data.files.paths"] == ("",)
  assert "data.files" not in leaves and "mesh" not in leaves


def _run(*args):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "rmjax.cli", *args], capture_output=True,
                        text=True, env=env, timeout=120)


@pytest.mark.parametrize("args", [(), ("--help",), ("help",)])
def test_top_level_help_lists_every_command(args):
  result = _run(*args)
  assert result.returncode == 0, result.stderr
  for name, (_, summary) in cli.COMMANDS.items():
    assert f"  {name}" in result.stdout and summary in result.stdout


def test_command_help_lists_fields_defaults_and_meanings():
  result = _run("train-rm", "--help", "--config.train.steps=7")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  at = lines.index("  --config.train.steps=7")  # the resolved value is the one shown
  assert lines[at + 1].strip() == describe.meanings("train-rm")["train.steps"]
  for name, _ in describe.leaves(_config("train-rm")):
    assert any(line.startswith(f"  --config.{name}=") for line in lines), name
  assert "(no description)" not in result.stdout


def test_help_command_form():
  result = _run("help", "score")
  assert result.returncode == 0, result.stderr
  assert "  --config.input=''" in result.stdout
  result = _run("help", "nonsense")
  assert result.returncode == 2 and "unknown command 'nonsense'" in result.stderr


POD_CONFIGS = sorted(f for f in os.listdir(os.path.join(ROOT, "experiments", "configs"))
                     if f.startswith("pod_") and f.endswith(".py"))


@pytest.mark.parametrize("name", POD_CONFIGS)
def test_dry_run_pod_configs_are_fully_described(name):
  """``rmjax dry-run --config=experiments/configs/pod_*.py --help`` explains every field,
  the ModelConfig fields such a config adds to its model sections included."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(
      f"pod_config_{name[:-3]}", os.path.join(ROOT, "experiments", "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  meanings = describe.meanings("dry-run")
  missing = [n for n, _ in describe.leaves(module.get_config())
             if describe.meaning_of(n, meanings) == "(no description)"]
  assert not missing, missing
  assert describe.meaning_of("dry_run.model.rope_theta", meanings) == describe.MODEL["rope_theta"]


def test_help_into_a_closed_pipe_exits_0():
  """``rmjax train-rm --help | head -1``: the reader leaves early; no BrokenPipe traceback."""
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen([sys.executable, "-m", "rmjax.cli", "train-rm", "--help"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  proc.stdout.close()  # before the child (still importing) writes anything
  stderr = proc.stderr.read()
  assert proc.wait(timeout=120) == 0 and "BrokenPipe" not in stderr, stderr
