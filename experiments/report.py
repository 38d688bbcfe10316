"""Writing an experiment's results: Markdown + CSV tables, JSON, and banded line plots.

Shared by the scripts in ``experiments/`` so that every reproduction reports the same way
(design.md: table and plot next to the metrics, mean and 95% interval over seeds).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def write_table(stem: str, columns: list[tuple[str, str]], rows: list[dict]) -> list[str]:
  """``stem``.md (pipe table) and ``stem``.csv of ``rows``.

  Args:
    stem: path without extension.
    columns: (key in each row, header) pairs, in order.
    rows: dicts; floats are printed with 3 significant decimals in Markdown and in full
      in CSV, None as an empty cell.

  Returns:
    The two paths written.
  """
  def cell(value, exact):
    if value is None:
      return ""
    if isinstance(value, float):
      return repr(value) if exact else f"{value:.3g}" if abs(value) >= 1000 else f"{value:.3f}"
    return str(value)

  with open(f"{stem}.md", "w") as f:
    f.write("| " + " | ".join(header for _, header in columns) + " |\n")
    f.write("|" + "---|" * len(columns) + "\n")
    for row in rows:
      f.write("| " + " | ".join(cell(row.get(key), False) for key, _ in columns) + " |\n")
  with open(f"{stem}.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow([key for key, _ in columns])
    for row in rows:
      writer.writerow([cell(row.get(key), True) for key, _ in columns])
  return [f"{stem}.md", f"{stem}.csv"]


def _plain(x):
  """numpy scalars and arrays as Python numbers and lists, for ``json.dump``."""
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if isinstance(x, (np.ndarray, np.generic)):
    return _plain(x.tolist())
  return x


def write_json(path: str, obj) -> str:
  """``obj`` (nested dicts/lists of numbers, numpy included) as indented JSON. Non-finite
  floats are refused rather than written as the non-standard NaN/Infinity."""
  with open(path, "w") as f:
    json.dump(_plain(obj), f, indent=1, allow_nan=False)
  return path


def interval(x: dict, signed: bool = False) -> str:
  """"mean [low, high]" of an interval dict, 3 decimals; ``signed`` writes every sign (for
  a difference)."""
  f = "+.3f" if signed else ".3f"
  return f"{x['mean']:{f}} [{x['low']:{f}}, {x['high']:{f}}]"


def check_lines(precondition, controls) -> list[str]:
  """The opening of every results.md and printed result: each precondition and control
  (``stats.precondition`` / ``stats.control`` records) with whether it held."""
  mark = lambda r: f"  [{'ok' if r['ok'] else 'FAILED'}] {r['name']}: {r['detail']}"
  return ["Preconditions:", *map(mark, precondition), "Controls:", *map(mark, controls)]


def verdict_lines(summary, how: str) -> list[str]:
  """``check_lines`` of the summary, then ``how`` (how the intervals were computed and
  corrected) and one line per verdict ({"verdict", "paper", "claim", "evidence"})."""
  return [*check_lines(summary["precondition"], summary["controls"]), f"Verdicts ({how}):",
          *(f"  {key}: {v['verdict']} ({v['paper']}: {v['claim']}; {v['evidence']})"
            for key, v in summary["verdicts"].items())]


def prepend(path: str, lines: list[str]) -> None:
  """Put ``lines`` (then a blank line) before what ``path`` holds: the verdicts above a
  results table."""
  with open(path) as f:
    rest = f.read()
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n\n" + rest)


def conclude(summary: dict, write, start: float, how: str) -> dict:
  """An experiment's end: its wall time since ``start`` into ``summary``, its outputs
  written (``write(summary) -> paths``) and announced with the verdicts (intervals ``how``)."""
  summary["total_seconds"] = time.time() - start
  announce(write(summary), verdict_lines(summary, how), summary["total_seconds"])
  return summary


def announce(paths: list[str], verdicts: list[str], seconds: float) -> None:
  """An experiment's last words: the files it wrote, its verdicts, its wall time."""
  for path in paths:
    print("wrote", path)
  print("\n".join(verdicts))
  print(f"total {seconds:.0f}s")


@dataclasses.dataclass
class Series:
  """One line of a panel: mean over seeds and its interval (low, high), all [points]."""

  label: str
  x: np.ndarray
  mean: np.ndarray
  low: np.ndarray
  high: np.ndarray
  dashed: bool = False


def plot_bands(path: str, grid: list[list[list[Series]]], titles: list[str], xlabel: str,
               ylabels: list[str], sharex: bool | str = True) -> str:
  """A grid of panels, grid[row][col] a list of ``Series``, each a line with a shaded
  interval; a line keeps its colour across panels (by label). ``titles`` per column,
  ``ylabels`` per row; ``sharex`` as matplotlib's (e.g. "col": one x range per column)."""
  rows, cols = len(grid), len(grid[0])
  fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False,
                           sharex=sharex)
  colours = {}
  for r, row in enumerate(grid):
    for c, panel in enumerate(row):
      ax = axes[r][c]
      for s in panel:
        colour = colours.setdefault(s.label, f"C{len(colours)}")
        ax.plot(s.x, s.mean, "--" if s.dashed else "-", color=colour, label=s.label, lw=1.5)
        ax.fill_between(s.x, s.low, s.high, color=colour, alpha=0.2, lw=0)
      ax.grid(alpha=0.3)
      if r == 0:
        ax.set_title(titles[c])
      if r == rows - 1:
        ax.set_xlabel(xlabel)
      if c == 0:
        ax.set_ylabel(ylabels[r])
      ax.legend(fontsize=8, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path

