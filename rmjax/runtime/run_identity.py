"""What makes a checkpoint another run's: the config fields and shapes compared on resume.

``Checkpointer.restore_latest`` refuses to continue a workdir whose stored config or data
hash differ from the current run's in a field that changes what the run computes
(``run_differences``; ``HARMLESS_FIELDS`` lists the ones that may differ and why), or whose
stored arrays have other shapes than the state it restores into (``shape_differences``).
Both return one ``name: stored -> now`` line per difference, for a one-line error.
"""

from __future__ import annotations

import jax

# Config fields that may differ between a checkpoint and the run that resumes from it,
# because they do not change what the run computes; a name covers the whole section
# under it. Every other field must be equal (see ``Checkpointer.restore_latest``).
HARMLESS_FIELDS = {
    # Where the run stops: raising it continues the same run. (The learning-rate
    # schedule of runtime/optim.py spans the run's length, so the steps after the resume
    # follow the schedule of the new length.)
    "train.steps": "where the run stops",
    "rl.iterations": "where a PPO run stops (train.steps of PPO)",
    # When things are written, not what is computed.
    "train.log_every": "how often means are logged",
    "train.eval_every": "how often the model is evaluated (evaluation does not train)",
    "train.save_every": "how often checkpoints are saved",
    "train.keep_checkpoints": "how many checkpoints are kept",
    # Where the run's files are: the workdir may be moved or renamed.
    "train.workdir": "where metrics and checkpoints are written",
    "train.checkpoint_dir": "where checkpoints are written",
    # Where arrays live: restore_latest reshards onto the current mesh, and the step
    # computes the same values on any mesh (up to the order of floating-point sums).
    "mesh": "how devices are arranged",
    # The ahead-of-time dry run and how processes find each other: no effect on a step.
    "dry_run": "settings of rmjax dry-run only",
    "distributed": "how the processes of a multi-host run connect",
}


def harmless(name: str) -> bool:
  """True if the dotted config field ``name`` may change on resume (``HARMLESS_FIELDS``)."""
  return any(name == field or name.startswith(field + ".") for field in HARMLESS_FIELDS)


_ABSENT = object()


def _flatten(tree, prefix: str = "") -> dict:
  """Nested dicts as ``{dotted name: leaf}`` (lists are leaves)."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
  return out


def _shown(value) -> str:
  text = "<absent>" if value is _ABSENT else repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def run_differences(stored: dict, now: dict) -> list[str]:
  """``name: stored -> now`` for each field of two provenances that changes the run.

  Compares the configs (fields in ``HARMLESS_FIELDS`` excepted; a field present on one
  side only differs) and the data hashes. A side without a config or data hash (None:
  unknown) is not compared.
  """
  out = []
  if stored.get("config") is not None and now.get("config") is not None:
    a, b = _flatten(stored["config"]), _flatten(now["config"])
    for name in sorted(set(a) | set(b)):
      old, new = a.get(name, _ABSENT), b.get(name, _ABSENT)
      if old != new and not harmless(name):
        out.append(f"{name}: {_shown(old)} -> {_shown(new)}")
  if None not in (stored.get("data_hash"), now.get("data_hash")) and (
      stored["data_hash"] != now["data_hash"]):
    out.append(f"data_hash: {_shown(stored['data_hash'])} -> {_shown(now['data_hash'])}")
  return out


def _leaf_name(path) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in path)


def _expected_shape(x) -> tuple:
  """The stored shape of a leaf: a typed PRNG key is stored as its key data."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return tuple(jax.eval_shape(jax.random.key_data,
                                jax.ShapeDtypeStruct(x.shape, x.dtype)).shape)
  return tuple(x.shape)


def shape_differences(stored_tree, abstract_state) -> list[str]:
  """``leaf: stored shape vs expected shape`` for each leaf whose shape differs or that
  exists on one side only (``stored_tree``: Orbax's array metadata of the state item)."""
  stored = {_leaf_name(p): getattr(m, "shape", None)
            for p, m in jax.tree_util.tree_leaves_with_path(stored_tree)}
  expected = {_leaf_name(p): _expected_shape(x)
              for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
  out = []
  for name in sorted(set(stored) | set(expected)):
    if name not in stored:
      out.append(f"{name}: not stored vs expected {expected[name]}")
    elif name not in expected:
      out.append(f"{name}: stored {tuple(stored[name])} vs not expected")
    elif stored[name] is not None and tuple(stored[name]) != expected[name]:
      out.append(f"{name}: stored {tuple(stored[name])} vs expected {expected[name]}")
  return out
