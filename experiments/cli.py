"""The command line every experiment script shares: ``--config=FILE --config.x=y``."""

from __future__ import annotations

import os

import jax
from absl import app
from absl import logging as absl_logging
from ml_collections import config_flags

CACHE_DIR = os.path.join("runs", "jax_cache")  # used unless JAX_COMPILATION_CACHE_DIR is set


def main(run) -> None:
  """Parses ``--config`` (an ml_collections config file, overridable field by field) and
  calls ``run(config)``. The flag is defined here, when a script runs, so that importing
  an experiment's helpers from another one defines no flag.

  A persistent compilation cache is on: an experiment trains many runs of one shape (the
  members of an ensemble, one per seed), and each would otherwise compile its step anew.
  """
  config = config_flags.DEFINE_config_file("config", None, "experiment config file")

  def start(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
      jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    run(config.value)

  app.run(start)
