"""Command line: ``rmjax <command> [--config=FILE] [--config.field=value ...] [--debug]``.

Each command has an embedded default config (``rmjax/configs``); ``--config`` points
at another config file (``experiments/configs/*.py``) and ``--config.x=y`` overrides
single fields. ``rmjax help`` lists the commands, ``rmjax <command> --help`` the fields of
its config with their defaults and meanings (``rmjax.configs.describe``).

Before a command runs, every numeric field is checked against ``rmjax.configs.ranges``,
so an out-of-range value stops it before anything is written. Exit status: 0 done; 2 a
user error (a bad override or value, a missing or malformed file, a stale run folder, a
non-finite stop), printed as one line ``rmjax <command>: <what is wrong>`` without a
traceback (``--debug`` or ``RMJAX_DEBUG=1`` shows it); 143 stopped by SIGTERM after a
save (rerun to resume). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import linecache
import logging
import os
import sys
import sysconfig

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

import rmjax
from rmjax import configs
from rmjax.configs import describe, ranges

# name -> (module, what it does in one line)
COMMANDS = {
    "demo": ("rmjax.commands.demo",
             "build a model sharded over the local devices, sample from it and score it"),
    "train-rm": ("rmjax.commands.train_rm",
                 "train a Bradley-Terry reward model (or ensemble); resumes an existing run"),
    "score": ("rmjax.commands.score",
              "add a trained reward model's reward to every row of a JSONL file"),
    "eval-rm": ("rmjax.commands.eval_rm",
                "pairwise accuracy of a trained reward model on preference sets"),
    "score-pairs": ("rmjax.commands.score_pairs",
                    "preference strength of every training pair from an ensemble run"),
    "rl": ("rmjax.commands.rl", "online RL (PPO, RLOO, GRPO, Dr. GRPO, REINFORCE++) against "
                               "reward models; resumes an existing run"),
    "sft": ("rmjax.commands.sft", "supervised fine-tuning of a policy (or rejection sampling: "
                                  "best of n by a reward model); resumes"),
    "dpo": ("rmjax.commands.dpo", "direct preference optimisation (DPO, cDPO, IPO, SimPO, ORPO, "
                                  "KTO) of a policy on preference pairs; resumes"),
    "dry-run": ("rmjax.commands.dry_run",
                "compile a train-rm or ppo step for a target mesh and report its memory"),
    "export-hf": ("rmjax.commands.export_hf",
                  "write a trained reward model or policy as a Hugging Face folder"),
}
USAGE = "usage: rmjax <command> [--config=FILE] [--config.field=value ...] [--debug]"
HELP_WORDS = ("help", "--help", "-h", "-help", "--helpfull")
USER_ERROR, PREEMPTED = 2, 143  # exit statuses; 143 = 128 + SIGTERM, as a shell reports it
# Raised by an rmjax check on what the user gave: a one-line message, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, FloatingPointError)
_PACKAGE = os.path.dirname(os.path.abspath(rmjax.__file__)) + os.sep
_STDLIB = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = [USAGE, "", "commands:"]
  lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
  lines += ["", "rmjax <command> --help lists the command's config fields, defaults and "
                "meanings.", "commands: " + ", ".join(COMMANDS)]
  return "\n".join(lines)


def command_help(command: str, config) -> str:
  return "\n".join([f"rmjax {command}: {COMMANDS[command][1]}",
                    USAGE.replace("<command>", command), "",
                    "config fields (default, then meaning):",
                    describe.format_help(config, describe.meanings(command))])


def _is_stdlib(filename: str) -> bool:
  return filename.startswith("<") or (filename.startswith(_STDLIB) and
                                      "-packages" + os.sep not in filename)


def is_user_error(error: BaseException) -> bool:
  """A user error: one of ``USER_ERRORS`` raised by rmjax's own code, not from inside jax,
  flax or numpy. Its innermost frame outside the standard library is in the rmjax package
  and is a ``raise`` (or, for an OS error, any line: ``open`` of a missing file); an error
  from traced code, whose frames JAX filters, is never one."""
  if not isinstance(error, USER_ERRORS):
    return False
  if any("JAX has removed its internal frames" in note
         for note in getattr(error, "__notes__", ())):
    return False
  if type(error.__cause__).__name__ == "UnfilteredStackTrace":
    return False
  frames = []
  tb = error.__traceback__
  while tb is not None:
    frames.append((os.path.abspath(tb.tb_frame.f_code.co_filename), tb.tb_lineno))
    tb = tb.tb_next
  frames = [(f, line) for f, line in frames if not _is_stdlib(f)]
  if not frames or not frames[-1][0].startswith(_PACKAGE):
    return False
  if isinstance(error, OSError):
    return True
  return linecache.getline(*frames[-1]).lstrip().startswith("raise")


def message(error: BaseException) -> str:
  """The error in one line (an OS error: its reason and file)."""
  if isinstance(error, OSError) and error.strerror and error.filename:
    return f"{error.strerror}: {error.filename}"
  return " ".join(str(error).split("\n")).strip() or type(error).__name__


def _print_and_exit(text: str) -> None:
  """Print help and exit 0, also when a pager or ``head`` closed the pipe early."""
  try:
    print(text, flush=True)
  except BrokenPipeError:  # the reader has what it wanted; silence the final flush
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  sys.exit(0)


def debug_wanted(argv: list[str]) -> bool:
  return "--debug" in argv or os.environ.get("RMJAX_DEBUG", "") not in ("", "0", "false")


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  debug = debug_wanted(argv)
  argv = [a for a in argv if a != "--debug"]
  if len(argv) < 2 or argv[1] in HELP_WORDS:
    if len(argv) > 2:  # rmjax help <command>
      argv = [argv[0], argv[2], "--help"]
    else:
      _print_and_exit(usage())
  if argv[1] not in COMMANDS:
    print(f"rmjax: unknown command {argv[1]!r}\n{usage()}", file=sys.stderr)
    sys.exit(USER_ERROR)
  command = argv.pop(1)
  want_help = any(a in HELP_WORDS for a in argv[1:])
  argv = [a for a in argv if a not in HELP_WORDS[1:]]
  # JAX logs at INFO that it found no TPU; on a CPU or GPU host that is only noise.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  default = os.path.join(os.path.dirname(configs.__file__),
                         f"{command.replace('-', '_')}.py")
  try:  # parse once up front so a bad override is one clear line, not a traceback
    config_flag = config_flags.DEFINE_config_file("config", default, "Experiment config.")
    flags.FLAGS(argv)
    config = config_flag.value  # overrides are applied on first access
  except (flags.Error, AttributeError, KeyError, ValueError) as error:
    if debug:
      raise
    detail = str(error.args[0] if error.args else error)
    for escaped, plain in (("\\n", " "), ("\n", " "), ("\\'", "'")):  # KeyError quoting
      detail = detail.replace(escaped, plain)
    print(f"rmjax {command}: bad config override: {detail.replace(chr(39), '')}",
          file=sys.stderr)
    sys.exit(USER_ERROR)
  if want_help:
    _print_and_exit(command_help(command, config))
  problems = ranges.check(config)
  if problems:  # before the command creates or loads anything
    print(f"rmjax {command}: " + "; ".join(problems), file=sys.stderr)
    sys.exit(USER_ERROR)
  module = __import__(COMMANDS[command][0], fromlist=["run"])

  def run_command(_):
    from rmjax.parallel import distributed  # pylint: disable=import-outside-toplevel
    from rmjax.runtime import loop  # pylint: disable=import-outside-toplevel

    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every save at INFO.
    try:
      # One of several processes (a TPU pod slice, SLURM, an explicit coordinator)?
      distributed.initialize(config.get("distributed"))
      module.run(config)  # absl would exit with a returned value as status.
    except loop.Preempted as error:
      print(f"rmjax {command}: {error}", file=sys.stderr)
      sys.exit(PREEMPTED)
    except USER_ERRORS as error:
      if debug or not is_user_error(error):
        raise
      print(f"rmjax {command}: {message(error)}", file=sys.stderr)
      sys.exit(USER_ERROR)

  app.run(run_command, argv=argv[:1])  # flags are parsed above; parsing twice repeats tuples


if __name__ == "__main__":
  main()
