#!/usr/bin/env bash
# Mount a Cloud Storage bucket (Cloud Storage FUSE) at REMOTE_DIR/runs on every worker, so
# that every run's workdir (runs/NAME) is one directory all workers share: multi-host
# Orbax checkpoints need that, and the results outlive the TPU VM.
set -euo pipefail
usage="usage: tpu/mount_bucket.sh --bucket=gs://NAME[/PREFIX] [--setting=value ...]"
source "$(dirname "$0")/common.sh"

parse_settings "$usage" "$@"
check_settings PROJECT ZONE TPU_NAME REMOTE_DIR BUCKET DRY_RUN
path="${BUCKET#gs://}"
path="${path%/}"
bucket="${path%%/*}"
only_dir=""
if [[ $path == */* ]]; then only_dir="--only-dir=${path#*/} "; fi
mount="$REMOTE_DIR/runs"

on_workers all "set -euo pipefail
if ! command -v gcsfuse >/dev/null; then
  echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" |
    sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
    sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
fi
mkdir -p $mount
if mountpoint -q $mount; then echo \"\$(hostname): $mount is already mounted\"; exit 0; fi
gcsfuse --implicit-dirs --rename-dir-limit=1000000 $only_dir$bucket $mount"
