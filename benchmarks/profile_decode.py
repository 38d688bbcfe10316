"""Where one decode step of the S0 sampler spends its time, and the machine's memory floor.

    python benchmarks/profile_decode.py

Traces one ``generate`` call (batch 16, 64 prompt + 64 new tokens) with ``jax.profiler``,
keeps the ops that ran once per decode step, and groups them by kind: weight matmuls and
reductions (YNNPACK fusions), the batched attention dots, and the rest. Also measures
the read bandwidth (``harness.machine_limits``), from which the memory floor of a decode step
(all weights plus the whole KV cache read once) follows. Profiler overhead inflates the
small ops a little; the figures are for finding the bottleneck, not for quoting speed.
"""

import collections
import glob
import gzip
import json
import tempfile

import harness  # benchmarks/harness.py (this script's folder is on sys.path)
import jax
from flax import nnx

from rmjax.models import config, sampler
from rmjax.models.transformer import Transformer

BATCH, PROMPT, NEW = 16, 64, 64


def per_step_op_times(trace_dir: str, steps: int) -> dict[str, float]:
  events = json.load(gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]))
  total, count = collections.Counter(), collections.Counter()
  for event in events["traceEvents"]:
    if event.get("ph") == "X":
      total[event["name"]] += event["dur"]
      count[event["name"]] += 1
  kinds = collections.Counter()
  for name, micros in total.items():
    if count[name] % steps == 0 and not name.startswith(("end", "Thunk", "while")):
      kinds[name.split(".")[0]] += micros / steps
  return kinds


def main():
  cfg = config.s0()
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  prompts = jax.random.randint(jax.random.key(1), (BATCH, PROMPT), 0, cfg.vocab_size)
  sampling = sampler.SamplingConfig(max_new_tokens=NEW)
  run = lambda: sampler.generate(model, prompts, None, jax.random.key(0), sampling).tokens
  run().block_until_ready()
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    run().block_until_ready()
    jax.profiler.stop_trace()
    kinds = per_step_op_times(trace_dir, NEW - 1)
  print(f"per decode step, traced: {sum(kinds.values()) / 1e3:.2f} ms")
  for name, micros in kinds.most_common(8):
    print(f"  {micros / 1e3:6.3f} ms  {name}")
  params = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  cache = 2 * cfg.n_layers * BATCH * (PROMPT + NEW) * cfg.d_model * 4
  bandwidth = harness.machine_limits()["memory_bytes_per_s"] / 1e9
  floor_ms = (params + cache) / bandwidth / 1e6
  print(f"read bandwidth {bandwidth:.1f} GB/s; a step reads {params / 1e6:.1f} MB of weights "
        f"+ {cache / 1e6:.1f} MB of KV cache: memory floor {floor_ms:.2f} ms per step")


if __name__ == "__main__":
  main()
