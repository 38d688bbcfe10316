"""``rmjax eval-rm``: a trained reward model's pairwise accuracy on preference sets.

By default the set is the held-out split of the synthetic task the run trained on, which
the repository generates; preference files and LLMBar/RewardBench are named by path
(``parse_sets``). For each set (``config.sets``): pairs, accuracy (a tie counts 1/2), mean margin
r_chosen - r_rejected, and the other held-out metrics of ``rm_evaluate.evaluate``; then
the pair-weighted overall accuracy and margin. The table is printed and written beside
the run as ``<workdir>/eval_<name>.md`` and ``.json``. For an ensemble, accuracy and
margin are those of the members' mean reward, and the table adds each member's accuracy
("m0", "m1", ...) and the average member's ("members").

``config.workdir`` may also be an ``rmjax dpo`` run: its pairs are scored by the policy's
implicit reward β·log(π/π_ref) summed over each response (``commands/trained_reward.py``),
one member, with the same table and fields; "synthetic" is then the held-out split of the
synthetic task it was trained on. That reward is conditioned on the prompt, so every pair
must have one.
"""

from __future__ import annotations

import dataclasses
import json
import os

from rmjax import parallel
from rmjax.commands import trained_reward
from rmjax.data import readers, schema
from rmjax.data.schema import DataError
from rmjax.data.tokenize import (
  check_token_ids,
  check_tokenizer_fits,
  load_tokenizer,
  tokenize_pairs,
)
from rmjax.parallel.sharding import data_parallel_size
from rmjax.rm.load import encoding_for
from rmjax.tasks import preference as synthetic

LLMBAR = "llmbar"
SYNTHETIC = "synthetic"  # the run's own synthetic task's held-out pairs


def parse_sets(sets) -> list[tuple[str, str, str | None]]:
  """``sets``: comma-separated entries (a string or a list), each
    "synthetic"              the held-out pairs of the run's synthetic task (path "");
    "llmbar=FOLDER"          the five LLMBar/RewardBench subsets under FOLDER (the LLMBar
                             checkout, its Dataset/LLMBar, or a folder holding llmbar/);
    "llmbar"                 the same under $RMJAX_SHARED_DATA;
    "name=path[:format]"     one preference file.
  Returns (name, path, format or None) per set.
  """
  entries = [s.strip() for s in (sets.split(",") if isinstance(sets, str) else sets)]
  out = []
  for entry in filter(None, entries):
    if entry == SYNTHETIC:
      out.append((SYNTHETIC, "", SYNTHETIC))
      continue
    name, eq, path = entry.partition("=")
    if entry == LLMBAR or (name.strip() == LLMBAR and eq and os.path.isdir(path.strip())):
      root = path.strip() if eq else readers.shared_data_dir()
      if root is None:
        raise ValueError("sets=llmbar: name the LLMBar folder (sets=llmbar=FOLDER) or set "
                         "RMJAX_SHARED_DATA")
      out += [(subset, str(file), "llmbar")
              for subset, file in readers.llmbar_subsets(root).items()]
      continue
    if not eq or not name.strip() or not path.strip():
      raise ValueError(f"sets entry {entry!r} is not {SYNTHETIC!r}, 'llmbar=FOLDER' or "
                       "'name=path[:format]'")
    fmt = None
    head, colon, tail = path.rpartition(":")
    if colon and tail in readers.FORMATS:
      path, fmt = head, tail
    out.append((name.strip(), path, fmt))
  if not out:
    raise ValueError("sets names no preference set")
  names = [name for name, _, _ in out]
  if len(set(names)) != len(names):
    raise ValueError(f"sets repeats a name: {names}")
  return out


def synthetic_eval_pairs(run_config) -> dict:
  """The held-out split of the synthetic task the run in ``run_config`` trained on."""
  data = run_config.get("data") or {}
  if data.get("source") != "synthetic":
    raise ValueError(f"sets={SYNTHETIC}: the run was trained on data.source="
                     f"{data.get('source')!r}, not the synthetic task; name preference files "
                     "as sets=name=path")
  fields = data.synthetic.to_dict() if hasattr(data.synthetic, "to_dict") else dict(
      data.synthetic)
  return synthetic.make_split(synthetic.from_fields(fields), "eval")


def _member_columns(row: dict) -> list[str]:
  """An ensemble's per-member accuracies ("accuracy/m") and the average member's."""
  members = sorted((k for k in row if k.startswith("accuracy/")),
                   key=lambda k: int(k.split("/")[1]))
  return members + (["member_accuracy"] if "member_accuracy" in row else [])


def overall(rows: list[dict]) -> dict:
  """Pair-count-weighted accuracy and mean margin (and member accuracies) over the sets."""
  total = sum(r["pairs"] for r in rows)
  keys = ["accuracy", "margin", *_member_columns(rows[0])]
  return {"subset": "overall", "pairs": total,
          **{k: sum(r["pairs"] * r[k] for r in rows) / total for k in keys}}


def markdown_table(rows: list[dict], summary: dict) -> str:
  members = _member_columns(summary)
  titles = ["members" if k == "member_accuracy" else f"m{k.split('/')[1]}" for k in members]
  lines = ["| subset | pairs | accuracy | mean margin |" + "".join(f" {t} |" for t in titles),
           "|---|---:|---:|---:|" + "---:|" * len(titles)]
  for r in [*rows, summary]:
    name = f"**{r['subset']}**" if r is summary else r["subset"]
    lines.append(f"| {name} | {r['pairs']} | {r['accuracy']:.4f} | {r['margin']:+.4f} |"
                 + "".join(f" {r[k]:.4f} |" for k in members))
  return "\n".join(lines) + "\n"


def _default_name(sets, parsed) -> str:
  if isinstance(sets, str) and sets.strip().partition("=")[0].strip() == LLMBAR and all(
      fmt == "llmbar" for _, _, fmt in parsed):
    return LLMBAR
  names = [name for name, _, _ in parsed]
  return "+".join(names) if len(names) <= 3 else f"{len(names)}sets"


def run(config) -> dict:
  parsed = parse_sets(config.sets)
  mesh = parallel.make_mesh(parallel.MeshConfig(**config.mesh))
  model = trained_reward.load(config.workdir, mesh)
  run_config = model.run_config
  enc = encoding_for(run_config, model, config.tokenizer, config.max_len,
                     config.max_response_len)
  tokenizer = load_tokenizer(enc.tokenizer) if enc.tokenizer else None
  check_tokenizer_fits(tokenizer, model.cfg.vocab_size)
  dp = data_parallel_size(mesh)
  batch_size = -(-config.batch_size // dp) * dp

  rows = []
  for name, path, fmt in parsed:
    if fmt == SYNTHETIC:
      arrays = synthetic_eval_pairs(run_config)
      metrics = model.evaluate(arrays, batch_size, mesh)
      rows.append({"subset": name, "pairs": len(arrays[schema.WEIGHT]), **metrics,
                   "path": f"{SYNTHETIC} task (held-out split)"})
      continue
    pairs = readers.read_pairs(path, fmt, subset=name).pairs
    if not pairs:
      raise DataError(f"{path}: no pairs to evaluate")
    for pair in pairs:
      if isinstance(pair.chosen, str) and tokenizer is None:
        raise DataError(f"{pair.source}: text pairs need --config.tokenizer (a tokenizer "
                        "folder, a .gguf file or gpt2-bpe); the run was not trained on text")
      for content in (pair.prompt, pair.chosen, pair.rejected):
        check_token_ids(content, model.cfg.vocab_size, pair.source)
      model.check_prompt(pair.prompt, pair.source)
    arrays = tokenize_pairs(pairs, tokenizer, enc.max_len, enc.max_response_len,
                            pad_to_longest=True)
    metrics = model.evaluate(arrays, batch_size, mesh)
    rows.append({"subset": name, "pairs": len(pairs), **metrics, "path": path})
  summary = overall(rows)
  table = markdown_table(rows, summary)

  run_dir = os.path.dirname(run_config.checkpoint.directory)
  name = config.name or _default_name(config.sets, parsed)
  md_path, json_path = (os.path.join(run_dir, f"eval_{name}.{ext}") for ext in ("md", "json"))
  step = run_config.checkpoint.step
  header = (f"Reward model {run_dir} (step {step}, {model.what}); tokenizer "
            f"{enc.tokenizer or 'none'}, max_len {enc.max_len}, max_response_len "
            f"{enc.max_response_len}\n\n")
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(header + table)
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump({"workdir": run_dir, "step": step, "encoding": dataclasses.asdict(enc),
               "sets": rows, "overall": summary}, f, indent=2)
  print(header + table, end="")
  print(f"wrote {md_path} and {json_path}")
  return {"sets": rows, "overall": summary, "markdown": md_path, "json": json_path}
