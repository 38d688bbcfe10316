"""``rmjax export-hf``: a trained reward model or policy as a Hugging Face folder.

kind "reward" (a ``train-rm`` run) -> sequence classifiers (``rmjax.models.hf_classifier``):
  one backbone (a single model, or K heads on a shared backbone) -> one folder with
  ``num_labels`` = K; separate ensemble members -> ``member_0/``, ``member_1/``, ... with
  ``num_labels`` = 1 each. ``member`` = m writes member (or head) m alone, in ``out`` itself.
kind "policy" -> a causal LM (``hf_io.save_hf``): an ``rl`` run's actor, or the synthetic
  task's base policy of a ``train-rm`` run on that task.

``out`` is written under a temporary name beside it and renamed into place at the end, so
it is complete or absent. Each model folder also gets the run's tokenizer (a tokenizer
folder's files are copied; a .gguf or gpt2-bpe tokenizer is saved by transformers); ``out``
gets ``rmjax_export.json``: source run, step and the checkpoint's git commit and versions.
Every exported model passes through ``_save``: the one place to change a model before
conversion (merging LoRA adapters, for instance).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil

import jax
import numpy as np
from flax import nnx

from rmjax.data.tokenize import load_tokenizer
from rmjax.models import hf_io, lora
from rmjax.models.hf_classifier import save_classifier
from rmjax.models.transformer import Transformer
from rmjax.rl import build as rl_build
from rmjax.rm import load as load_rm
from rmjax.tasks import preference as synthetic

KINDS = ("auto", "reward", "policy")
PAD = 0  # the id rmjax's pipelines pad with (synthetic.PAD too)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
                   "tokenizer.model", "chat_template.jinja", "chat_template.json")


def _member(scorer, m: int) -> Transformer:
  """Separate member m of a stacked ensemble as its own ``Transformer``."""
  pure = jax.tree.map(lambda x: np.asarray(x)[m], nnx.to_pure_dict(scorer.params))
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(scorer.cfg,
                                                                 rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def reward_models(workdir, step: int | None, member: int):
  """([(subfolder, model, reward heads or None for all)], run config) of a train-rm run.

  A run with Gaussian heads exports its members' mean columns only: a sequence classifier's
  logits are the rewards, and the log-std columns have no place among them."""
  scorer, run_config = load_rm.load_ensemble(workdir, step=step)
  k, where = scorer.k, run_config.checkpoint.directory
  if not -1 <= member < k:
    raise ValueError(f"member={member} does not exist: {where} holds {k} member"
                     f"{'s' if k > 1 else ''} (0..{k - 1}; -1 = all)")
  means = list(range(scorer.layout.heads)) if scorer.has_stds else None  # the first columns
  if not scorer.layout.stacked:
    model = nnx.merge(scorer.graphdef, scorer.params)
    return [("", model, means if member < 0 else [member])], run_config
  members = range(k) if member < 0 else [member]
  subfolder = lambda m: f"member_{m}" if member < 0 else ""
  return [(subfolder(m), _member(scorer, m), means) for m in members], run_config


def base_policy(run_config, where) -> Transformer:
  """The synthetic task's base policy of a train-rm run."""
  data = run_config["data"]
  if data["source"] != "synthetic":
    raise ValueError(f"{where} was trained on data.source={data['source']!r}: only a run on the "
                     "synthetic task has a policy to export (or export an rl run's actor)")
  return synthetic.build_task(synthetic.from_fields(data["synthetic"])).policy


def tokenizer_spec(run_config) -> str:
  """The tokenizer a train-rm run read its preference files with ("" = none)."""
  data = run_config.get("data") or {}
  return (data.get("files") or {}).get("tokenizer", "") if data.get("source") == "files" else ""


def _write_tokenizer(spec: str, folder: pathlib.Path, tokenizer) -> None:
  """A tokenizer folder's files copied into ``folder``; other specs saved by transformers."""
  path = pathlib.Path(spec)
  if path.is_dir():
    for name in TOKENIZER_FILES:
      if (path / name).is_file():
        shutil.copy2(path / name, folder / name)
  else:
    tokenizer.save_pretrained(str(folder))


def _save(model: Transformer, folder: pathlib.Path, kind: str, pad_token_id: int,
          heads) -> None:
  """One model's config.json and model.safetensors (a policy: the synthetic task's ids)."""
  model = lora.merged(model)  # LoRA adapters folded into their projections
  if kind == "reward":
    save_classifier(model, folder, pad_token_id=pad_token_id, heads=heads)
    return
  hf_io.save_hf(model, folder)
  config = json.loads((folder / "config.json").read_text())
  config.update(pad_token_id=synthetic.PAD, bos_token_id=synthetic.BOS,
                eos_token_id=synthetic.EOS)
  (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


@contextlib.contextmanager
def _staged(out: pathlib.Path, overwrite: bool):
  """A temporary folder beside ``out``, renamed to ``out`` when the block succeeds (an old
  ``out`` is removed only then) and deleted when it fails."""
  tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if out.exists() and overwrite:
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    tmp.rename(out)
    if old.is_dir():
      shutil.rmtree(old)
    else:
      old.unlink()
  else:
    tmp.rename(out)


def run(config) -> dict:
  if not config.out:
    raise ValueError("set --config.out to the folder to write")
  if config.kind not in KINDS:
    raise ValueError(f"kind={config.kind!r} is not one of {KINDS}")
  out = pathlib.Path(config.out).absolute()
  if out.exists() and not config.overwrite:
    raise FileExistsError(f"out={out} exists; remove it or set --config.overwrite=True")
  step, provenance = load_rm.read_provenance(config.workdir,
                                             None if config.step < 0 else config.step)
  run_config = provenance.get("config") or {}
  program = rl_build.run_program(run_config)  # "rl", "dpo", "sft" or "" (train-rm)
  is_policy_run = bool(program)
  kind = config.kind if config.kind != "auto" else "policy" if is_policy_run else "reward"
  if kind == "reward" and is_policy_run:
    raise ValueError(f"{config.workdir} is an {program} run: export its policy with "
                     "kind=policy")
  if kind == "reward":
    models, _ = reward_models(config.workdir, step, config.member)
  else:
    if config.member != -1:
      raise ValueError(f"member={config.member} applies to reward models; a policy is one model")
    where = f"{load_rm.checkpoint_dir(config.workdir)}/{step}"
    if "model" not in run_config and not is_policy_run:
      raise ValueError(f"{where}: the provenance holds no train-rm, rl, dpo or sft run config")
    model = (rl_build.trained_policy(config.workdir, step) if is_policy_run
             else base_policy(run_config, where))
    models = [("", model, None)]
  spec = tokenizer_spec(run_config)
  tokenizer = load_tokenizer(spec) if spec else None
  pad_token_id = config.pad_token_id
  if pad_token_id < 0:
    pad_token_id = getattr(tokenizer, "pad_token_id", None)
    pad_token_id = PAD if pad_token_id is None else pad_token_id
  with _staged(out, config.overwrite) as tmp:
    for subfolder, model, heads in models:
      folder = tmp / subfolder
      _save(model, folder, kind, pad_token_id, heads)
      if tokenizer is not None:
        _write_tokenizer(spec, folder, tokenizer)
    record = dict(
        kind=kind, source=str(pathlib.Path(config.workdir).absolute()), step=step,
        folders=[s or "." for s, _, _ in models], member=config.member,
        pad_token_id=pad_token_id if kind == "reward" else synthetic.PAD, tokenizer=spec or None,
        **{k: provenance.get(k) for k in ("git_commit", "git_dirty", "versions", "data_hash")})
    (tmp / "rmjax_export.json").write_text(json.dumps(record, indent=2) + "\n")
  what = "reward model" if kind == "reward" else "policy"
  folders = [f for f in record["folders"] if f != "."]  # "." : out itself
  print(f"exported the {what} of step {step} of {config.workdir} to {out}"
        + (f" ({', '.join(folders)})" if folders else ""))
  return dict(record, out=str(out))

