#!/usr/bin/env bash
# Delete the TPU VM (or the queued resource and its VM): a slice bills until it is deleted.
set -euo pipefail
usage="usage: tpu/teardown.sh [--queued] [--yes] [--setting=value ...]"
source "$(dirname "$0")/common.sh"
yes=0

while (($#)); do
  case "$1" in
    --queued) QUEUED=1 ;;
    --yes) yes=1 ;;
    -h | --help) echo "$usage"; exit 0 ;;
    *) setting_flag "$1" || die "unknown argument '$1'; $usage" ;;
  esac
  shift
done
check_settings PROJECT ZONE TPU_NAME QUEUED DRY_RUN
if [[ $QUEUED == 1 ]]; then what="queued resource $TPU_NAME and its TPU VM"; else what="TPU VM $TPU_NAME"; fi

if [[ $yes == 0 ]]; then
  answer=""
  read -r -p "Delete $what in $ZONE (project $PROJECT)? Type $TPU_NAME to confirm: " answer || true
  [[ $answer == "$TPU_NAME" ]] || die "not confirmed; nothing deleted (--yes skips this question)"
fi
where=(--project="$PROJECT" --zone="$ZONE" --quiet)
if [[ $QUEUED == 1 ]]; then
  gcloud_run compute tpus queued-resources delete "$TPU_NAME" "${where[@]}" --force
else
  gcloud_run compute tpus tpu-vm delete "$TPU_NAME" "${where[@]}"
fi
