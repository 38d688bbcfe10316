#!/usr/bin/env bash
# rmjax on a GPU machine, in under five minutes: install over the machine's own JAX, print
# the versions, run the numerics tests (tests/objectives, tests/models) at the highest
# matmul precision, then our side of benchmarks/rm_train.py and benchmarks/generation.py at
# a larger shape than their CPU defaults, printing tokens/s and MFU.
#
# Written for the GPU machine some sessions are lent (an image with its own CUDA JAX and no
# network): run it from the repository root there, with the wheels that
# scripts/fetch_device_wheels.sh downloads into .whl/ carried along:
#
#   bash scripts/device_check.sh            # logs and JSON under $OUT (default below)
#   SKIP="tests" bash scripts/device_check.sh   # leave stages out by name (a rerun)
#
# Each stage has its own time limit (300 s together) and the script goes on after a failed
# stage; it exits 1 if any stage failed. See benchmarks/README.md, "On a GPU".
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/rmjax-device-check}
SITE=${SITE:-/tmp/rmjax-site}
# MFU's denominator, TFLOP/s: H100/H200 SXM dense TF32 from the datasheet, since the
# benchmarks compute in float32 at JAX's default matmul precision. Set it for another chip.
PEAK_TFLOPS=${PEAK_TFLOPS:-495}
# The larger shapes: preset S2 (d 512, 8 layers, vocab 4096, seq 512; benchmarks/shapes.py)
# with batches four times the CPU defaults. RM_SHAPE and GEN_SHAPE replace them (e.g. a tiny
# shape to try the script on a CPU).
RM_SHAPE=${RM_SHAPE:-"--shape s2 --pairs 16 --warmup 3 --windows 5 --window-steps 5"}
GEN_SHAPE=${GEN_SHAPE:-"--shape s2 --batch 16 --reps 5"}
read -r -a RM_ARGS <<< "$RM_SHAPE"
read -r -a GEN_ARGS <<< "$GEN_SHAPE"
SKIP=${SKIP:-}
mkdir -p "$OUT"
failed=()
started=$SECONDS

# stage NAME SECONDS COMMAND...: run COMMAND under a time limit, its output to the terminal
# and to $OUT/NAME.log; a failure is remembered (and returned), not fatal.
stage() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  if [[ " $SKIP " == *" $name "* ]]; then
    echo "=== $name: skipped (SKIP)"
    return 0
  fi
  echo "=== $name (limit ${limit} s)"
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "=== $name: TIMED OUT after $((SECONDS - start)) s"
  else
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
  fi
  [ "$rc" -eq 0 ] || failed+=("$name")
  return "$rc"
}

# 1. Install. The wheels go to their own folder, first on the path; rmjax itself goes in
#    editable without its dependencies, so the image's CUDA jax stays (an editable install
#    needs setuptools there; without it, the checkout on PYTHONPATH does the same).
shopt -s nullglob
wheels=(.whl/*.whl)
shopt -u nullglob
if [ ${#wheels[@]} -gt 0 ]; then
  stage wheels 15 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "${wheels[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no wheels in .whl/ (scripts/fetch_device_wheels.sh): using the image's packages only"
fi
if ! stage install 20 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
  echo "editable install failed: using the checkout on PYTHONPATH instead"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# 2. Versions, devices, and which of rmjax's dependencies import.
stage versions 20 "$PY" - <<'EOF'
import importlib, importlib.metadata as md, platform, sys
import jax
import rmjax
print(f"python {platform.python_version()} ({sys.executable})")
print(f"rmjax from {rmjax.__file__}")
for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-dtypes",
             "ml_collections", "grain", "gguf", "tensorboardX", "transformers", "safetensors",
             "tokenizers", "scipy", "torch", "pytest"):
  try:
    print(f"  {name} {md.version(name)}")
  except md.PackageNotFoundError:
    print(f"  {name} MISSING")
for module in ("ml_collections", "gguf", "grain", "tensorboardX", "tensorflow_datasets"):
  try:
    importlib.import_module(module)
  except Exception as e:  # report it and go on
    print(f"  import {module}: FAILED ({type(e).__name__}: {e})")
print(f"backend {jax.default_backend()}, devices {jax.devices()}")
print("pinned for CI: jax>=0.10.2,<0.11 (pyproject.toml); here jax", jax.__version__)
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  || echo "nvidia-smi: not available"

# 3. The numerics tests at the highest matmul precision (an accelerator's default may round
#    float32 matmuls to TF32 or bf16). Slow tests need model files that do not travel.
stage tests 130 env JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m pytest -q -p no:cacheprovider \
  -m "not slow" tests/objectives tests/models

# 4. Our side of the benchmarks, one child each (the peers need trl and a CPU of their own).
#    The last stdout line of a child is its JSON.
stage rm_train 60 "$PY" benchmarks/rm_train.py --side ours "${RM_ARGS[@]}"
stage generation 40 "$PY" benchmarks/generation.py --side ours "${GEN_ARGS[@]}"

# 5. tokens/s and MFU from the children's JSON, with the FLOP counts of the benchmarks.
stage summary 10 env RM_FLAGS="${RM_ARGS[*]}" GEN_FLAGS="${GEN_ARGS[*]}" \
  PEAK_TFLOPS="$PEAK_TFLOPS" OUT="$OUT" "$PY" - <<'EOF'
import json, os, statistics, sys

def last_json(name):
  lines = [l for l in open(os.path.join(os.environ["OUT"], f"{name}.log")) if l.startswith("{")]
  if not lines:
    raise SystemExit(f"{name}: no JSON line in {name}.log (the stage failed)")
  return json.loads(lines[-1])

peak = float(os.environ["PEAK_TFLOPS"]) * 1e12
out = {}
try:
  rm = last_json("rm_train")
  step_s = statistics.median(rm["window_s"]) / rm["window_steps"]
  flops = rm["model_flops_per_step"]
  out["rm_train"] = dict(device=rm["device"], jax=rm["jax"], flags=os.environ["RM_FLAGS"],
                         step_s=step_s, tokens_per_s=rm["step_tokens"] / step_s,
                         model_tflops_per_s=flops / step_s / 1e12,
                         mfu=flops / step_s / peak, final_loss=rm["final_loss"])
except (SystemExit, KeyError, ValueError) as e:
  out["rm_train"] = f"no result: {e}"
try:
  gen = last_json("generation")
  sample_s = statistics.median(gen["times_s"])
  flops = gen["model_flops"]
  out["generation"] = dict(
      device=gen["device"], flags=os.environ["GEN_FLAGS"], generate_s=sample_s,
      tokens_per_s=gen["new_tokens"] / sample_s,
      model_tflops_per_s=flops / sample_s / 1e12, mfu=flops / sample_s / peak,
      pct_of_measured_f32_matmul=100 * flops / sample_s / gen["matmul_flops_per_s"],
      measured_f32_matmul_tflops_per_s=gen["matmul_flops_per_s"] / 1e12,
      measured_memory_gb_per_s=gen["memory_bytes_per_s"] / 1e9,
      rm_forward_tokens_per_s=gen["rm_tokens"] / statistics.median(gen["rm_times_s"]))
except (SystemExit, KeyError, ValueError) as e:
  out["generation"] = f"no result: {e}"
out["mfu_peak_tflops_per_s"] = peak / 1e12
print(json.dumps(out, indent=1))
bad = [k for k, v in out.items() if isinstance(v, str)]
sys.exit(1 if bad else 0)
EOF

echo "=== done in $((SECONDS - started)) s; logs in $OUT"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed stages: ${failed[*]}"
  exit 1
fi
