"""Command line: ``rmjax <command> [--config=FILE] [--config.field=value ...]``.

Each command has an embedded default config (``rmjax/configs``); ``--config`` points
at another config file (``experiments/configs/*.py``) and ``--config.x=y`` overrides
single fields.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from rmjax import configs
from rmjax.parallel import distributed

COMMANDS = {"demo": "rmjax.commands.demo", "train-rm": "rmjax.commands.train_rm",
            "score": "rmjax.commands.score", "eval-rm": "rmjax.commands.eval_rm",
            "score-pairs": "rmjax.commands.score_pairs", "ppo": "rmjax.commands.ppo",
            "dry-run": "rmjax.commands.dry_run", "export-hf": "rmjax.commands.export_hf"}


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    names = ", ".join(COMMANDS)
    sys.exit(f"usage: rmjax <command> [--config=FILE] [--config.field=value]\n"
             f"commands: {names}")
  command = argv.pop(1)
  # JAX logs at INFO that it found no TPU; on a CPU or GPU host that is only noise.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  default = os.path.join(os.path.dirname(configs.__file__),
                         f"{command.replace('-', '_')}.py")
  module = __import__(COMMANDS[command], fromlist=["run"])
  try:  # parse once up front so a bad override is one clear line, not a traceback
    config_flag = config_flags.DEFINE_config_file("config", default, "Experiment config.")
    flags.FLAGS(argv)
    _ = config_flag.value  # overrides are applied on first access
  except (flags.Error, AttributeError, KeyError, ValueError) as error:
    detail = str(error.args[0] if error.args else error)
    for escaped, plain in (("\\n", " "), ("\n", " "), ("\\'", "'")):  # KeyError quoting
      detail = detail.replace(escaped, plain)
    sys.exit(f"rmjax {command}: bad config override: {detail.replace(chr(39), '')}")

  def run_command(_):
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every save at INFO.
    # One of several processes (a TPU pod slice, SLURM, an explicit coordinator)?
    distributed.initialize(config_flag.value.get("distributed"))
    module.run(config_flag.value)  # absl would exit with a returned value as status.

  app.run(run_command, argv=argv[:1])  # flags are parsed above; parsing twice repeats tuples


if __name__ == "__main__":
  main()
