"""``rmjax score``: a trained reward model's reward for every row of a JSONL file.

Rows hold ``response`` (one sequence; written back with ``reward``) or ``chosen`` and
``rejected`` (a pair; ``reward_chosen`` and ``reward_rejected``), and an optional
``prompt`` (default empty). Fields are text (tokenised with ``config.tokenizer``) or
lists of token ids. Every other field of a row is copied unchanged; rows keep their order.
"""

from __future__ import annotations

import gzip
import json
import os

import jax
import numpy as np
from flax import nnx

from rmjax import parallel
from rmjax.data.array_source import eval_batches
from rmjax.data.schema import DataError
from rmjax.data.tokenize import (check_token_ids, check_tokenizer_fits, load_tokenizer,
                                  tokenize_sequences)
from rmjax.parallel.sharding import data_parallel_size
from rmjax.train.load_rm import load_trained_rm, resolve_max_len


def read_jsonl(path: str) -> list[tuple[str, dict]]:
  """(``path:line``, row) for every non-blank line; ``.gz`` read transparently."""
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  rows = []
  for line_no, line in enumerate(raw.split(b"\n"), 1):
    if not line.strip():
      continue
    where = f"{path}:{line_no}"
    try:
      row = json.loads(line.decode("utf-8-sig" if line_no == 1 else "utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise DataError(f"{where}: not a JSON line ({e})") from None
    if not isinstance(row, dict):
      raise DataError(f"{where}: row must be a JSON object, got {type(row).__name__}")
    rows.append((where, row))
  if not rows:
    raise DataError(f"{path}: the file has no rows")
  return rows


def _content(row: dict, field: str, where: str, *, empty_ok: bool = False):
  value = row.get(field, "" if empty_ok else None)
  ids = isinstance(value, list) and all(
      isinstance(t, int) and not isinstance(t, bool) for t in value)
  if not (isinstance(value, str) or ids):
    raise DataError(f"{where}: field {field!r} must be text or a list of token ids, got "
                    f"{value!r:.60}")
  if not empty_ok and not len(value):
    raise DataError(f"{where}: field {field!r} is empty")
  return value


def sequences_of(rows) -> tuple[list, list, list[tuple[int, str]]]:
  """Prompts, responses and (row index, output field) of every sequence to score."""
  prompts, responses, slots = [], [], []
  for i, (where, row) in enumerate(rows):
    if "chosen" in row and "rejected" in row:
      fields = (("chosen", "reward_chosen"), ("rejected", "reward_rejected"))
    elif "response" in row:
      fields = (("response", "reward"),)
    else:
      raise DataError(f"{where}: a row needs 'response' or 'chosen' and 'rejected' "
                      f"(fields: {sorted(row)})")
    prompt = _content(row, "prompt", where, empty_ok=True)
    for field, out in fields:
      prompts.append(prompt)
      responses.append(_content(row, field, where))
      slots.append((i, out))
  return prompts, responses, slots


def sequence_rewards(model, tokens: np.ndarray, mask: np.ndarray, batch_size: int,
                     mesh) -> np.ndarray:
  """float32 [n] rewards (first reward head) of tokens/mask [n, seq], batched on ``mesh``."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def forward(params, tokens, mask):
    m = nnx.merge(graphdef, params)
    return m.rewards(m(tokens, mask)[0], mask)[:, 0]

  out = []
  for batch, real in eval_batches({"tokens": tokens, "mask": mask}, batch_size):
    batch = parallel.shard_batch(batch, mesh)
    out.append(np.asarray(jax.device_get(forward(params, batch["tokens"], batch["mask"])))[:real])
  return np.concatenate(out) if out else np.zeros(0, np.float32)


def default_output(path: str) -> str:
  base = path[:-3] if path.endswith(".gz") else path
  base = base[:-6] if base.endswith(".jsonl") else base
  return base + ".scored.jsonl"


def run(config) -> dict:
  if not config.input:
    raise ValueError("set --config.input to a JSONL file to score")
  mesh = parallel.make_mesh(parallel.MeshConfig(**config.mesh))
  model, run_config = load_trained_rm(config.workdir, mesh)
  max_len = resolve_max_len(config.max_len, model)
  rows = read_jsonl(config.input)
  prompts, responses, slots = sequences_of(rows)
  for (i, _), prompt, response in zip(slots, prompts, responses):
    for content in (prompt, response):
      check_token_ids(content, model.cfg.vocab_size, rows[i][0])
  if config.tokenizer:
    tokenizer = load_tokenizer(config.tokenizer)
    check_tokenizer_fits(tokenizer, model.cfg.vocab_size)
  elif any(isinstance(x, str) and x for x in prompts + responses):
    where = next(rows[i][0] for (i, _), p, r in zip(slots, prompts, responses)
                 if (isinstance(p, str) and p) or isinstance(r, str))
    raise DataError(f"{where}: text rows need --config.tokenizer (a tokenizer folder, a "
                    ".gguf file or gpt2-bpe)")
  else:
    tokenizer = None
  tokens, mask = tokenize_sequences(prompts, responses, tokenizer, max_len,
                                    pad_to_longest=True)
  dp = data_parallel_size(mesh)
  batch_size = -(-config.batch_size // dp) * dp
  rewards = sequence_rewards(model, tokens, mask, batch_size, mesh)
  out_rows = [dict(row) for _, row in rows]
  for (i, field), reward in zip(slots, rewards):
    out_rows[i][field] = float(reward)
  output = config.output or default_output(config.input)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w", encoding="utf-8") as f:
    for row in out_rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  step = run_config.checkpoint.step
  print(f"scored {len(rows)} rows ({len(rewards)} sequences, up to {tokens.shape[1]} tokens) "
        f"with step {step} of {config.workdir}: mean reward {float(np.mean(rewards)):+.4f}, "
        f"std {float(np.std(rewards)):.4f}")
  print(f"wrote {output}")
  return {"output": output, "rewards": rewards, "step": step}
