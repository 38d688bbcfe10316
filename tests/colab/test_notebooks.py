"""The colab/ notebooks: stored clean, and executed headlessly at the tiny size.

The execution test runs them in a ``python3`` kernel, which is this interpreter
(jupyter_client starts a kernel spec whose command is ``python`` as ``sys.executable``),
with the checkout as ``RMJAX_LOCAL_CHECKOUT`` and ``RMJAX_NOTEBOOK_SIZE=tiny``, on one CPU
device (the suite's eight fake devices would only split tiny batches).
"""

import math
import os
import pathlib
import re
import sys

import nbformat
import pytest
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = ("quickstart", "ppo", "best_of_n")


def read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(ROOT / "colab" / f"{name}.ipynb", as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs(name):
  nb = read(name)
  nbformat.validate(nb)
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  assert code, f"{name}.ipynb has no code cells"
  for i, cell in enumerate(code):
    assert cell.outputs == [] and cell.execution_count is None, (
        f"{name}.ipynb code cell {i} was saved with outputs; clear them before committing")
  assert nb.metadata.kernelspec.name == "python3"


def kernel_env(tmp: pathlib.Path) -> dict:
  """This environment without the suite's eight fake devices, plus the CI settings; the
  kernel's IPython and JAX caches go under ``tmp``."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(RMJAX_LOCAL_CHECKOUT=str(ROOT), RMJAX_NOTEBOOK_SIZE="tiny", JAX_PLATFORMS="cpu",
             MPLBACKEND="Agg", IPYTHONDIR=str(tmp / "ipython"),
             JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def text_of(cell) -> str:
  return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def number(pattern: str, text: str) -> float:
  match = re.search(pattern, text)
  assert match, f"no {pattern!r} in the output:\n{text[-2000:]}"
  return float(match.group(1))


def check(name: str, cells, workdir: pathlib.Path) -> None:
  """The outputs of an executed notebook: the checkout's rmjax in this interpreter, the
  tiny size, its figures and finite printed metrics."""
  code = [cell for cell in cells if cell.cell_type == "code"]
  installed = text_of(code[0])
  assert f"rmjax from {ROOT / 'rmjax'}" in installed, installed
  assert f"({sys.executable})" in installed, installed  # python3 is this interpreter
  assert "size: tiny" in text_of(code[1])
  figures = sum(out.output_type == "display_data" and "image/png" in out.get("data", {})
                for cell in code for out in cell.outputs)
  text = "".join(text_of(cell) for cell in code)
  if name == "quickstart":
    assert figures == 2
    for metric in ("held-out accuracy", "gold agreement", r"correlation\(predicted, gold\) =",
                   "correlation of the differences ="):
      assert 0 <= abs(number(metric + r" (-?[\d.]+)", text)) <= 1
  elif name == "best_of_n":
    assert figures == 1
    lines = [line for line in text.splitlines() if "gold gain at the largest n" in line]
    assert len(lines) == 4, text  # single, mean, WCO, UWO
    for line in lines:
      assert number(r"proxy gain ([-+][\d.]+)", line) >= 0, line
      assert math.isfinite(number(r"gold gain at the largest n: ([-+][\d.]+)", line)), line
  else:
    assert figures == 1
    line = next(line for line in text.splitlines() if line.startswith("beta = 0.01, first"))
    for metric in ("proxy", "gold", "KL", "response length"):
      assert math.isfinite(number(rf"{metric} (-?[\d.]+)", line)), line
    logged = (workdir / "runs/colab/ppo/policy/beta_0.01/metrics.jsonl").read_text()
    assert len(logged.splitlines()) == 3  # one line per tiny iteration
  assert (workdir / "runs" / "colab" / name).is_dir()  # the workdir, under the cwd


@pytest.mark.slow
def test_notebooks_execute(tmp_path):
  """The three notebooks, one after another in one kernel started in ``tmp_path``, each
  after ``%reset -f``: a notebook that uses a name it does not define itself fails as in
  a fresh kernel, while imports, the synthetic task and compiled programs carry over (the
  quickstart's reward model is also the PPO notebook's), which saves most of the time.
  Any cell error fails the test with the cell and its traceback."""
  km = AsyncKernelManager(kernel_name="python3", connection_file=str(tmp_path / "kernel.json"))
  try:
    for name in NOTEBOOKS:
      nb = read(name)
      nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
      NotebookClient(nb, km=km, timeout=240).execute(cwd=str(tmp_path), env=kernel_env(tmp_path))
      check(name, nb.cells[1:], tmp_path)
  finally:
    if km.has_kernel:
      run_sync(km.shutdown_kernel)(now=True)
