"""Anthropic HH-RLHF transcripts: split a (chosen, rejected) pair into prompt and responses.

Each HH-RLHF row holds two whole dialogues, ``"\n\nHuman: ... \n\nAssistant: ..."``, that
share every turn but the last assistant reply. The prompt is everything up to and including
the LAST ``"\n\nAssistant:"``; each response is what follows it, byte for byte (usually with
a leading space), so ``prompt + response`` gives back the original transcript.
"""

from __future__ import annotations

import os

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
  """Returns ``(prompt, chosen_response, rejected_response)``.

  Raises ValueError, naming the field, when a transcript has no assistant turn or the two
  do not share the same prompt.
  """
  cuts = []
  for name, text in (("chosen", chosen), ("rejected", rejected)):
    at = text.rfind(ASSISTANT)
    if at < 0:
      raise ValueError(f"field {name!r} has no {ASSISTANT!r} turn")
    cuts.append(at + len(ASSISTANT))
  prompt, other = chosen[:cuts[0]], rejected[:cuts[1]]
  if prompt != other:
    differ = len(os.path.commonprefix([prompt, other]))
    raise ValueError(f"fields 'chosen' and 'rejected' do not share the prompt before the last "
                     f"{ASSISTANT!r} (they differ from character {differ})")
  return prompt, chosen[cuts[0]:], rejected[cuts[1]:]
