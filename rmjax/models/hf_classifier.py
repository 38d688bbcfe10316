"""Reward models as Hugging Face sequence classifiers (config.json + safetensors, no torch).

Our reward model is a backbone with K scalar heads (no bias) read at each sequence's last
real token (``Transformer.reward_scores``). transformers' ``LlamaForSequenceClassification``
(and its ``Qwen2`` and ``GPT2`` siblings) is the same backbone with ``score`` [K, d_model]
(no bias), read at the last token that is not ``pad_token_id``. So the folder holds
``hf_io``'s backbone tensors, ``score.weight`` = our head [d_model, K] transposed, and a
config saying ``num_labels=K``, ``problem_type="regression"`` and the pad id.

transformers finds the last real token from the ids alone, so its scores equal ours for
batches padded with ``pad_token_id`` on the right (or the left, given ``position_ids``)
whose real tokens never end in that id.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import safetensors.numpy

from rmjax.models import hf_io
from rmjax.models.transformer import Transformer

ARCHITECTURES = {"llama": "LlamaForSequenceClassification",
                 "qwen2": "Qwen2ForSequenceClassification",
                 "gpt2": "GPT2ForSequenceClassification"}


def classifier_config(cfg, pad_token_id: int, num_labels: int) -> dict:
  """The config.json dict of a sequence classifier with ``cfg``'s backbone.

  Labels are named ``reward`` (one head) or ``reward_0``... (K heads)."""
  out = hf_io.config_to_hf(cfg)
  kind = out["model_type"]
  if kind not in ARCHITECTURES:
    raise ValueError(f"no Hugging Face sequence-classification class for model_type={kind!r} "
                     f"(supported: {', '.join(ARCHITECTURES)})")
  names = ["reward"] if num_labels == 1 else [f"reward_{i}" for i in range(num_labels)]
  out.update(architectures=[ARCHITECTURES[kind]], problem_type="regression",
             pad_token_id=pad_token_id, id2label=dict(enumerate(names)),
             label2id={n: i for i, n in enumerate(names)})
  return out


def classifier_tensors(model: Transformer, heads: list[int] | None = None
                       ) -> dict[str, np.ndarray]:
  """HF name -> array: the backbone and ``score.weight`` [len(heads), d_model].

  ``heads``: which reward heads become the labels, in order (default: all K)."""
  if model.reward_head is None:
    raise ValueError("the model has num_reward_heads=0: there is no reward head to export")
  head = np.asarray(model.reward_head[...])  # [d_model, K]
  k = head.shape[1]
  heads = list(range(k)) if heads is None else list(heads)
  bad = [h for h in heads if not 0 <= h < k]
  if bad or not heads:
    raise ValueError(f"reward heads {bad or heads} out of range: the model has {k}")
  tensors = hf_io.hf_tensors(model, lm_head=False)
  tensors["score.weight"] = np.ascontiguousarray(head[:, heads].T)
  return tensors


def save_classifier(model: Transformer, folder, *, pad_token_id: int = 0,
                    heads: list[int] | None = None) -> None:
  """Write config.json and model.safetensors of ``model`` as a sequence classifier.

  ``pad_token_id``: the id the classifier treats as padding (rmjax pads with 0);
  ``heads``: the reward heads to write, as in ``classifier_tensors``. The LM and value
  heads are not written."""
  tensors = classifier_tensors(model, heads)
  config = classifier_config(model.cfg, pad_token_id, tensors["score.weight"].shape[0])
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  safetensors.numpy.save_file(tensors, str(folder / "model.safetensors"),
                              metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
