"""The command line every experiment script shares: ``--config=FILE --config.x=y``."""

from __future__ import annotations

from absl import app
from absl import logging as absl_logging
from ml_collections import config_flags


def main(run) -> None:
  """Parses ``--config`` (an ml_collections config file, overridable field by field) and
  calls ``run(config)``. The flag is defined here, when a script runs, so that importing
  an experiment's helpers from another one defines no flag."""
  config = config_flags.DEFINE_config_file("config", None, "experiment config file")

  def start(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
    run(config.value)

  app.run(start)
