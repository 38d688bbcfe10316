"""The package's layers: every ``rmjax`` import goes up the table of ``docs/design.md``.

Each module is parsed with ``ast`` (nothing is imported), so a forbidden import fails
here even when it sits inside a function.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "rmjax"

# package -> the rmjax packages it may import (besides itself).
FOUNDATION = {"objectives": set(), "parallel": set()}
ALLOWED = {
    **FOUNDATION,
    "models": {"parallel"},
    "data": {"parallel"},
    "tasks": {"models", "data", "objectives", "parallel"},
    "runtime": {"parallel"},
}
ALLOWED["rm"] = set(ALLOWED) | {"rm"}
# Backbone pretraining, a program beside rm/ and rl/: no task and no reward model.
ALLOWED["lm"] = {"models", "data", "runtime", "objectives", "parallel"}
ALLOWED["rl"] = ALLOWED["rm"] | {"rl", "lm"}  # SFT reuses the pretraining step
FACE = ("commands", "configs", "dry_run", "cli")  # may import anything


def _package(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def _rmjax_imports(path: pathlib.Path):
  tree = ast.parse(path.read_text(), filename=str(path))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("rmjax."):
          yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == "rmjax":  # from rmjax import parallel
        for alias in node.names:
          yield node.lineno, f"rmjax.{alias.name}"
      elif node.module.startswith("rmjax."):
        yield node.lineno, node.module


def _modules():
  return sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_package_is_in_the_table():
  packages = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _modules()}
  unknown = packages - set(ALLOWED) - set(FACE) - {"__init__"}
  assert not unknown, f"packages missing from the layer table: {sorted(unknown)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
  own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
  if own in FACE or own == "__init__":
    return
  bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
         for line, name in _rmjax_imports(path)
         if _package(name) not in ALLOWED[own] | {own}]
  assert not bad, "; ".join(bad)


def test_the_checker_sees_a_forbidden_import(tmp_path):
  """The parser finds imports inside functions and in ``from rmjax import x`` form."""
  module = tmp_path / "m.py"
  module.write_text("def f():\n  from rmjax import rl\n  import rmjax.rm.trainer\n")
  assert list(_rmjax_imports(module)) == [(2, "rmjax.rl"), (3, "rmjax.rm.trainer")]
