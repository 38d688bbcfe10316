#!/usr/bin/env bash
# Copy a run's directory and logs from one worker (worker 0 by default) to this machine.
# Checkpoints of multi-host runs belong in a gs:// bucket: copy those with gcloud storage.
set -euo pipefail
usage="usage: tpu/fetch.sh [--worker=N] [--setting=value ...] RUN_DIR [DEST]
  RUN_DIR: the run's workdir relative to REMOTE_DIR on the worker, e.g. runs/train_rm
  DEST: local folder (default tpu_results/TPU_NAME); files land in DEST/worker-N/"
source "$(dirname "$0")/common.sh"
worker=0
paths=()

while (($#)); do
  case "$1" in
    --worker=*) worker="${1#*=}" ;;
    -h | --help) echo "$usage"; exit 0 ;;
    -*) setting_flag "$1" || die "unknown argument '$1'; $usage" ;;
    *) paths+=("$1") ;;
  esac
  shift
done
((${#paths[@]} >= 1 && ${#paths[@]} <= 2)) || die "give RUN_DIR and optionally DEST; $usage"
run_dir="${paths[0]}"
dest="${paths[1]:-tpu_results/$TPU_NAME}/worker-$worker"
[[ $worker =~ ^[0-9]+$ ]] || die "--worker='$worker' is not valid (one worker number: copies would collide)"
[[ $run_dir != gs://* ]] || die "RUN_DIR='$run_dir' is in a bucket: gcloud storage cp -r $run_dir DEST copies it"
[[ $run_dir =~ ^[A-Za-z0-9_][-A-Za-z0-9_./]*$ && $run_dir != *..* ]] ||
  die "RUN_DIR='$run_dir' must be a relative path inside REMOTE_DIR (e.g. runs/train_rm)"
check_settings PROJECT ZONE TPU_NAME REMOTE_DIR DRY_RUN
echo "  RUN_DIR          = $run_dir" >&2
echo "  DEST             = $dest" >&2

if [[ $DRY_RUN == 0 ]]; then mkdir -p "$dest"; fi
gcloud_run compute tpus tpu-vm scp --recurse "$TPU_NAME:$REMOTE_DIR/$run_dir" \
  "$TPU_NAME:$REMOTE_DIR/logs" "$dest/" --project="$PROJECT" --zone="$ZONE" --worker="$worker"
