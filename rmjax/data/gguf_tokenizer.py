"""The tokenizer stored in a llama.cpp GGUF file, as a ``transformers`` fast tokenizer."""

from __future__ import annotations

import pathlib

import gguf


def tokenizer_from_gguf(path):
  """The GGUF's tokenizer, built offline (no hub access).

  Vocabulary, merges, special tokens (bos/eos/pad) and ``tokenizer.chat_template`` come
  from the file's metadata through transformers' GGUF support; the chat template is read
  from the metadata directly when transformers leaves it out.
  """
  import transformers  # deferred: slow to import, only needed here

  path = pathlib.Path(path)
  tokenizer = transformers.AutoTokenizer.from_pretrained(
      str(path.parent), gguf_file=path.name, local_files_only=True)
  if tokenizer.chat_template is None:
    field = gguf.GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    if field is not None:
      tokenizer.chat_template = field.contents()
  return tokenizer
