"""Named activations: the model calls ``shard_activation(x, axes)`` with logical names
("batch", "length", "embed"); the parallel layer decides, per traced program, what sharding
those names get (``sharding.on_mesh`` installs the rule). Without a rule it is the identity,
so the model never needs a mesh.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

_activation_rule = contextvars.ContextVar("activation_rule", default=None)


@contextlib.contextmanager
def activation_rule(constrain):
  """While active (around a trace), ``shard_activation(x, axes)`` returns
  ``constrain(x, axes)``."""
  token = _activation_rule.set(constrain)
  try:
    yield
  finally:
    _activation_rule.reset(token)


def shard_activation(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
  """``x``, whose dimensions are named ``axes`` (e.g. ("batch", "length", "embed")),
  pinned to the sharding the active rule gives those names; unchanged without one."""
  constrain = _activation_rule.get()
  return x if constrain is None else constrain(x, axes)
