#!/usr/bin/env bash
# Download, on a machine with network access, the wheels scripts/device_check.sh installs on
# the GPU machine, which reaches no package registry: the dependencies of rmjax that its
# image lacks, at the versions pinned in requirements/constraints.txt, built for CPython 3.12
# on x86-64 Linux (the image's python3). They land in .whl/, which this script adds to
# .git/info/exclude so that git ignores it; carry .whl along with the device run.
#
#   bash scripts/fetch_device_wheels.sh      # DEST=dir for another folder
#
# The image already has jax, flax, optax, orbax-checkpoint, transformers, safetensors,
# tokenizers, scipy, torch, pytest, absl-py, etils, protobuf, PyYAML, tqdm and cloudpickle;
# grain also needs array_record, dm-tree and portpicker. tensorflow-datasets is left out:
# the device check never imports it.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DEST=${DEST:-.whl}
PACKAGES=(ml_collections gguf tensorboardX grain array_record dm-tree portpicker)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")" "$DEST"
grep -qxF "/$DEST/" "$exclude" 2>/dev/null || echo "/$DEST/" >> "$exclude"

platform_flags=()
for p in "${PLATFORMS[@]}"; do
  platform_flags+=(--platform "$p")
done
for name in "${PACKAGES[@]}"; do
  # The pin, whichever of - and _ the constraints file spells the name with.
  pattern=$(printf '%s' "$name" | sed 's/[-_]/[-_]/g')
  pin=$(grep -iE "^${pattern}==" requirements/constraints.txt || true)
  if [ -z "$pin" ]; then
    echo "no pin for $name in requirements/constraints.txt" >&2
    exit 2
  fi
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platform_flags[@]}" -d "$DEST" "$pin"
done
ls -l "$DEST"
du -sh "$DEST"
