"""Hidden states of a frozen backbone prefix, computed once and kept on disk.

Fine-tuning only the top of a reward model (the last ``n`` blocks, the final norm and the
reward head) needs the input of block ``L - n`` for every sequence, and nothing below it
changes during training. We compute those activations once per (data, frozen weights,
split layer) and store them as ``.npy`` files that training memory-maps, so a 2-core CPU
pays for the expensive backbone pass a single time.

An entry holds one set of pairs (a dict of ``tokenize.tokenize_pairs`` arrays) at one
split layer ``start = L - n``:
  * ``features.npy``: [2 * pairs, width, d_model] in ``dtype`` (float16 by default), chosen
    rows first, then rejected. For ``n > 0`` the full right-padded sequence (pads zero);
    for ``n = 0`` only the last real token's hidden state (width 1): the final norm and
    the head act per token, so nothing else is needed.
  * ``arrays.npz``: the token-level arrays of the set (tokens, masks, prompt_len, margin,
    weight), so an entry alone is enough to train and evaluate.
  * ``meta.json``: what the key was made of.
Entries live under ``<root>/<key>`` with ``key`` a hash of the arrays, the frozen weights
(embedding and blocks below ``start``), the architecture, ``start`` and ``dtype``; they are
written to a temporary folder and renamed into place, so a killed run leaves no half entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rmjax.data import schema
from rmjax.models.transformer import (
  Transformer,
  attention_mask,
  default_positions,
  last_token_index,
)
from rmjax.runtime.metrics import Progress

FEATURES = "features"  # key of the [rows, width, d_model] features in a loaded set
_WIDTH_STEP = 32  # batches are cut to a multiple of this: few shapes, little padding


@dataclasses.dataclass(frozen=True)
class Entry:
  """One cached set at one split layer: ``arrays`` (token-level, [pairs, ...]) and
  ``features`` ([2 * pairs, width, d_model], memory-mapped read-only)."""

  path: pathlib.Path
  start: int  # first trainable block; == n_layers means head (and final norm) only
  arrays: dict[str, np.ndarray]
  features: np.ndarray


def sequences(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """A pair set's (tokens, mask) [2 * pairs, seq]: chosen rows, then rejected rows."""
  return (np.concatenate([arrays[schema.CHOSEN_TOKENS], arrays[schema.REJECTED_TOKENS]]),
          np.concatenate([arrays[schema.CHOSEN_MASK], arrays[schema.REJECTED_MASK]]))


def _hash_arrays(digest, tree) -> None:
  for key in sorted(tree):
    digest.update(key.encode())
    digest.update(np.ascontiguousarray(tree[key]).tobytes())


# ModelConfig fields the frozen prefix never reads (heads, training-only settings): a run
# that changes them, or a new field of this kind, still finds the cached features.
_NOT_IN_PREFIX = ("lm_head", "num_reward_heads", "value_head", "init_std",
                  "dropout_rate", "remat")


def frozen_fingerprint(model: Transformer, start: int) -> str:
  """Hash of what the features at block ``start`` depend on: the architecture fields the
  prefix reads, the embedding and blocks < start."""
  fields = {k: v for k, v in dataclasses.asdict(model.cfg).items() if k not in _NOT_IN_PREFIX}
  digest = hashlib.sha256(repr(sorted(fields.items())).encode())
  state = nnx.state(model)
  parts = {"embed": state["embed"]}
  if "pos_embed" in state:
    parts["pos_embed"] = state["pos_embed"]
  parts["blocks"] = {i: state["blocks"][i] for i in range(start)}
  for path, leaf in jax.tree_util.tree_leaves_with_path(parts):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.asarray(leaf).tobytes())
  return digest.hexdigest()[:16]


def entry_key(arrays: dict[str, np.ndarray], model_hash: str, start: int, dtype: str) -> str:
  digest = hashlib.sha256(f"{model_hash}|{start}|{dtype}".encode())
  _hash_arrays(digest, arrays)
  return digest.hexdigest()[:20]


def make_prefix_fn(graphdef, starts: tuple[int, ...]):
  """jitted (state, tokens, mask [b, s]) -> one array per start: the input of block
  ``start`` [b, s, d_model], or for ``start == n_layers`` the last real token's hidden
  state before the final norm [b, 1, d_model]."""

  @jax.jit
  def prefix(state, tokens, mask):
    model = nnx.merge(graphdef, state)
    positions = default_positions(mask)
    attn = attention_mask(mask, None, tokens.shape[1])
    x, done, out = model.embed_tokens(tokens, positions), 0, []
    for start in starts:
      x, _ = model.run_blocks(x, positions, attn, done, start)
      done = start
      if start == len(model.blocks):
        out.append(jnp.take_along_axis(x, last_token_index(mask)[:, None, None], axis=1))
      else:
        out.append(x)
    return out

  return prefix


def _write_entries(model, prefix, arrays, todo: dict[int, pathlib.Path], dtype: str,
                   batch_size: int, label: str) -> None:
  """One pass of ``prefix`` (``make_prefix_fn`` for ``sorted(todo)``) over ``arrays``'
  sequences, filling every ``todo`` folder."""
  tokens, mask = sequences(arrays)
  rows, width = tokens.shape
  n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
  starts = tuple(sorted(todo))
  outs = {s: np.lib.format.open_memmap(
      todo[s] / "features.npy", mode="w+", dtype=dtype,
      shape=(rows, 1 if s == n_layers else width, d_model)) for s in starts}
  state = nnx.state(model)
  lengths = mask.sum(1)
  order = np.argsort(-lengths, kind="stable")  # similar lengths share a batch: less padding
  batches = [order[i:i + batch_size] for i in range(0, rows, batch_size)]
  print(f"feature cache {label}: {rows} sequences up to block(s) {list(starts)} "
        f"in {len(batches)} batches", flush=True)
  progress = Progress(0, len(batches))
  for step, idx in enumerate(batches, 1):
    cut = min(width, -(-int(lengths[idx].max()) // _WIDTH_STEP) * _WIDTH_STEP)
    pad = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])  # one batch shape
    hidden = jax.device_get(prefix(state, tokens[pad, :cut], mask[pad, :cut]))
    for start, h in zip(starts, hidden):
      h = np.asarray(h[:len(idx)], np.float32)
      if start < n_layers:
        h = h * mask[idx, :cut, None]  # pads hold whatever attention made of them: zero them
      stored = h.astype(dtype)
      if not np.isfinite(stored).all():
        raise FloatingPointError(f"feature cache {label}: block {start} activations overflow "
                                 f"{dtype} (max |x| {np.abs(h).max():.3g}); use float32")
      outs[start][idx, :stored.shape[1]] = stored
    if step % 10 == 0 or step == len(batches):
      progress.update(step, {})
  for out in outs.values():
    out.flush()


def build(model: Transformer, sets: dict[str, dict[str, np.ndarray]], ns, root,
          *, dtype: str = "float16", batch_size: int = 16) -> dict[tuple[str, int], Entry]:
  """Cached features of every set for every ``n`` in ``ns`` (trainable top blocks).

  sets: name -> ``tokenize_pairs`` arrays. Entries already under ``root`` are reused;
  the missing ones of a set are filled in one pass up to the deepest split layer.
  Returns (set name, n) -> ``Entry``.
  """
  n_layers = model.cfg.n_layers
  for n in ns:
    if not 0 <= n <= n_layers:
      raise ValueError(f"n={n} trainable blocks is outside [0, {n_layers}]")
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  hashes = {n: frozen_fingerprint(model, n_layers - n) for n in ns}
  graphdef = nnx.graphdef(model)
  prefixes = {}  # one jitted function per set of split layers: sets share its compilations
  out = {}
  for name, arrays in sets.items():
    keys = {n: entry_key(arrays, hashes[n], n_layers - n, dtype) for n in ns}
    missing = {n: k for n, k in keys.items() if not (root / k).is_dir()}
    if missing:
      tmp = {n: pathlib.Path(tempfile.mkdtemp(prefix=f".{k}-", dir=root))
             for n, k in missing.items()}
      try:
        todo = {n_layers - n: tmp[n] for n in missing}
        starts = tuple(sorted(todo))
        if starts not in prefixes:
          prefixes[starts] = make_prefix_fn(graphdef, starts)
        _write_entries(model, prefixes[starts], arrays, todo, dtype, batch_size, name)
        for n, folder in tmp.items():
          np.savez(folder / "arrays.npz", **arrays)
          meta = dict(set=name, n=n, start=n_layers - n, dtype=dtype, model_hash=hashes[n],
                      pairs=len(arrays[schema.MARGIN]))
          (folder / "meta.json").write_text(json.dumps(meta, indent=2))
          if not (root / missing[n]).exists():  # another run may have written it meanwhile
            os.replace(folder, root / missing[n])  # atomic: the entry appears complete
      finally:
        for folder in tmp.values():
          shutil.rmtree(folder, ignore_errors=True)
    for n in ns:
      out[name, n] = load(root / keys[n])
  return out


def load(path) -> Entry:
  """An entry written by ``build``; its features memory-mapped read-only."""
  path = pathlib.Path(path)
  if not (path / "meta.json").is_file():
    raise FileNotFoundError(f"{path} is not a feature-cache entry (no meta.json)")
  meta = json.loads((path / "meta.json").read_text())
  with np.load(path / "arrays.npz") as stored:
    arrays = {k: stored[k] for k in stored.files}
  return Entry(path, meta["start"], arrays, np.load(path / "features.npy", mmap_mode="r"))
