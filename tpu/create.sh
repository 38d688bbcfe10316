#!/usr/bin/env bash
# Create a TPU VM slice: directly, or as a queued resource that waits for capacity.
set -euo pipefail
usage="usage: tpu/create.sh [--queued] [--spot] [--setting=value ...]"
source "$(dirname "$0")/common.sh"

while (($#)); do
  case "$1" in
    --queued) QUEUED=1 ;;
    --spot) SPOT=1 ;;
    -h | --help) echo "$usage"; exit 0 ;;
    *) setting_flag "$1" || die "unknown argument '$1'; $usage" ;;
  esac
  shift
done
check_settings PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION QUEUED SPOT DRY_RUN
where=(--project="$PROJECT" --zone="$ZONE")
shape=(--accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION")
options=()
if [[ $SPOT == 1 ]]; then options+=(--spot); fi

if [[ $QUEUED == 0 ]]; then
  [[ -z $VALID_FOR ]] || die "VALID_FOR='$VALID_FOR' applies to queued resources only (set QUEUED=1)"
  gcloud_run compute tpus tpu-vm create "$TPU_NAME" "${where[@]}" "${shape[@]}" "${options[@]}"
  exit 0
fi

check_settings VALID_FOR POLL_SECONDS WAIT_TIMEOUT
if [[ -n $VALID_FOR ]]; then options+=(--valid-until-duration="$VALID_FOR"); fi
gcloud_run compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
  "${where[@]}" "${shape[@]}" "${options[@]}"
if [[ $DRY_RUN == 1 ]]; then exit 0; fi
deadline=$((SECONDS + WAIT_TIMEOUT))
while true; do
  state="$(gcloud_run compute tpus queued-resources describe "$TPU_NAME" "${where[@]}" \
    --format='value(state.state)')"
  echo "$SCRIPT: queued resource $TPU_NAME is ${state:-in an unknown state}" >&2
  case "$state" in
    ACTIVE) exit 0 ;;
    FAILED | SUSPENDED)
      die "queued resource $TPU_NAME is $state; gcloud compute tpus queued-resources describe $TPU_NAME --zone=$ZONE says why, tpu/teardown.sh --queued deletes it" ;;
  esac
  ((SECONDS < deadline)) ||
    die "queued resource $TPU_NAME is not ACTIVE after WAIT_TIMEOUT=${WAIT_TIMEOUT}s; it stays in the queue (tpu/teardown.sh --queued deletes it)"
  sleep "$POLL_SECONDS"
done
