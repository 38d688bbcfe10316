"""``rmjax score``: a trained reward model's reward for every row of a JSONL file.

Rows hold ``response`` (one sequence; written back with ``reward``) or ``chosen`` and
``rejected`` (a pair; ``reward_chosen`` and ``reward_rejected``), and an optional
``prompt`` (default empty). Fields are text (tokenised with ``config.tokenizer``) or
lists of token ids. Every other field of a row is copied unchanged; rows keep their order.
An ensemble's rewards are its members' mean, and every member's reward is written too,
as ``member_rewards`` (``member_rewards_chosen``, ``member_rewards_rejected``): a list of
K numbers. A run with Gaussian heads (``ensemble.gaussian``) scores with its predicted means
and writes each member's predicted std as ``member_stds`` (``member_stds_chosen``, ...).

``config.workdir`` may also be an ``rmjax dpo`` run: its reward is the policy's implicit
reward β·log(π/π_ref) summed over the response tokens (``commands/trained_reward.py``), one
member, written to the same fields. That reward is conditioned on the prompt, so for such a
run ``prompt`` is required: every row must give the prompt its responses answer.
"""

from __future__ import annotations

import gzip
import json
import os
import sys

import jax
import numpy as np

from rmjax import parallel
from rmjax.commands import trained_reward
from rmjax.data import schema
from rmjax.data.array_source import padded_batches
from rmjax.data.schema import DataError, PreferencePair
from rmjax.data.tokenize import (
  PROMPT_LEN,
  check_token_ids,
  check_tokenizer_fits,
  load_tokenizer,
  tokenize_pairs,
  tokenize_sequences,
)
from rmjax.parallel.sharding import data_parallel_size
from rmjax.rm.load import encoding_for


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


def parse_rows(rows) -> tuple[list[tuple[int, object, object]], list[tuple[int, PreferencePair]]]:
  """Single-response rows as (row index, prompt, response); pair rows as (index, pair)."""
  singles, pairs = [], []
  for i, (where, row) in enumerate(rows):
    prompt = _content(row, "prompt", where, empty_ok=True)
    if "chosen" in row and "rejected" in row:
      pairs.append((i, PreferencePair(prompt, _content(row, "chosen", where),
                                      _content(row, "rejected", where), source=where)))
    elif "response" in row:
      singles.append((i, prompt, _content(row, "response", where)))
    else:
      raise DataError(f"{where}: a row needs 'response' or 'chosen' and 'rejected' "
                      f"(fields: {sorted(row)})")
  return singles, pairs


def blank_responses(singles, pairs) -> list[str]:
  """"where: field" of every text response that is only whitespace: it is scored as given,
  but is rarely meant (a response lost on the way into the file, say)."""
  out = [f"{where}: field 'response'" for where, text in singles
         if isinstance(text, str) and not text.strip()]
  for where, pair in pairs:
    out += [f"{where}: field {side!r}" for side in ("chosen", "rejected")
            if isinstance(getattr(pair, side), str) and not getattr(pair, side).strip()]
  return out


def encode_rows(singles, pairs, tokenizer, max_len: int, max_response_len: int | None):
  """(tokens int32 [n, seq], mask bool [n, seq], prompt tokens kept int32 [n],
  [(row index, output field)] per sequence).

  A pair's sides are cut together (the same prompt tokens), as in training and eval-rm.
  """
  parts, slots = [], []
  if singles:
    parts.append(tokenize_sequences([p for _, p, _ in singles], [r for _, _, r in singles],
                                    tokenizer, max_len, max_response_len, pad_to_longest=True,
                                    with_prompt_len=True))
    slots += [(i, "reward") for i, _, _ in singles]
  if pairs:
    arrays = tokenize_pairs([p for _, p in pairs], tokenizer, max_len, max_response_len,
                            pad_to_longest=True)
    for side in ((schema.CHOSEN_TOKENS, schema.CHOSEN_MASK),
                 (schema.REJECTED_TOKENS, schema.REJECTED_MASK)):
      parts.append((*(arrays[key] for key in side), arrays[PROMPT_LEN]))
    slots += [(i, "reward_chosen") for i, _ in pairs] + [(i, "reward_rejected") for i, _ in pairs]
  width = max(t.shape[1] for t, _, _ in parts)
  widen = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))
  tokens = np.concatenate([widen(t) for t, _, _ in parts])
  mask = np.concatenate([widen(m) for _, m, _ in parts])
  return tokens, mask, np.concatenate([p for _, _, p in parts]), slots


def score_in_batches(scorer, tokens: np.ndarray, mask: np.ndarray, batch_size: int,
                     mesh, prompt_len: np.ndarray | None = None):
  """float32 [n, K] member rewards of tokens/mask [n, seq], batched on ``mesh``.

  ``scorer``: ``(tokens, mask) -> [B, K]`` with ``k`` (``load_rm.load_ensemble``), or,
  given each row's prompt tokens ``prompt_len`` [n], ``(tokens, mask, prompt_len)``
  (``trained_reward.TrainedReward``, which a DPO run's implicit reward needs). A scorer
  that returns a tuple of [B, K] arrays (a Gaussian run's means and stds) gets the tuple
  of [n, K] arrays back, from one pass.
  """
  arrays = {"tokens": tokens, "mask": mask}
  if prompt_len is not None:
    arrays["prompt_len"] = prompt_len
  out = []
  for batch, real in padded_batches(arrays, batch_size):
    batch = parallel.shard_batch(batch, mesh)
    rewards = jax.device_get(scorer(*(batch[key] for key in arrays)))
    out.append(jax.tree.map(lambda x, real=real: np.asarray(x)[:real], rewards))
  if not out:
    return np.zeros((0, scorer.k), np.float32)
  return jax.tree.map(lambda *xs: np.concatenate(xs), *out)


def default_output(path: str) -> str:
  base = path[:-3] if path.endswith(".gz") else path
  base = base[:-6] if base.endswith(".jsonl") else base
  return base + ".scored.jsonl"


def run(config) -> dict:
  if not config.input:
    raise ValueError("set --config.input to a JSONL file to score")
  mesh = parallel.make_mesh(parallel.MeshConfig(**config.mesh))
  model = trained_reward.load(config.workdir, mesh)
  run_config = model.run_config
  enc = encoding_for(run_config, model, config.tokenizer, config.max_len,
                     config.max_response_len)
  rows = read_jsonl(config.input)
  singles, pairs = parse_rows(rows)
  blank = blank_responses([(rows[i][0], r) for i, _, r in singles],
                          [(p.source, p) for _, p in pairs])
  if blank:
    print(f"warning: {len(blank)} response{'s' if len(blank) > 1 else ''} of {config.input} "
          f"{'are' if len(blank) > 1 else 'is'} only whitespace (scored as given): "
          + "; ".join(blank[:3]) + ("; ..." if len(blank) > 3 else ""), file=sys.stderr)
  contents = [(rows[i][0], c) for i, p, r in singles for c in (p, r)]
  contents += [(rows[i][0], c) for i, p in pairs for c in (p.prompt, p.chosen, p.rejected)]
  for where, content in contents:
    check_token_ids(content, model.cfg.vocab_size, where)
  for where, row in rows:
    model.check_prompt(row.get("prompt", ""), where)
  texts = [where for where, c in contents if isinstance(c, str) and c]
  tokenizer = None
  if texts:
    if not enc.tokenizer:
      raise DataError(f"{texts[0]}: text rows need --config.tokenizer (a tokenizer folder, "
                      "a .gguf file or gpt2-bpe); the run was not trained on text")
    tokenizer = load_tokenizer(enc.tokenizer)
    check_tokenizer_fits(tokenizer, model.cfg.vocab_size)
  tokens, mask, prompt_len, slots = encode_rows(singles, pairs, tokenizer, enc.max_len,
                                                enc.max_response_len)
  dp = data_parallel_size(mesh)
  batch_size = -(-config.batch_size // dp) * dp
  if getattr(model.source, "has_stds", False):  # Gaussian heads: means and stds, one pass
    members, stds = score_in_batches(model.source.with_stds, tokens, mask, batch_size, mesh,
                                     prompt_len)
  else:
    members, stds = score_in_batches(model, tokens, mask, batch_size, mesh, prompt_len), None
  rewards = members.mean(1)
  out_rows = [dict(row) for _, row in rows]
  for j, ((i, field), reward, member) in enumerate(zip(slots, rewards, members)):
    out_rows[i][field] = float(reward)
    if model.k > 1:
      out_rows[i][field.replace("reward", "member_rewards")] = [float(r) for r in member]
    if stds is not None:
      out_rows[i][field.replace("reward", "member_stds")] = [float(s) for s in stds[j]]
  output = config.output or default_output(config.input)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w", encoding="utf-8") as f:
    for row in out_rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  step = run_config.checkpoint.step
  print(f"scored {len(rows)} rows ({len(rewards)} sequences, up to {tokens.shape[1]} of "
        f"max_len {enc.max_len} tokens{', tokenizer ' + enc.tokenizer if tokenizer else ''}) "
        f"with step {step} of {config.workdir} ({model.what}): mean reward "
        f"{float(np.mean(rewards)):+.4f}, std {float(np.std(rewards)):.4f}")
  print(f"wrote {output}")
  return {"output": output, "rows": out_rows, "step": step}
