#!/usr/bin/env bash
# Stop a run on every worker (SIGTERM to its process group), e.g. one hung at start-up.
set -euo pipefail
usage="usage: tpu/stop.sh [--run-name=NAME] [--setting=value ...]"
source "$(dirname "$0")/common.sh"
run_name=latest

while (($#)); do
  case "$1" in
    --run-name=*) run_name="${1#*=}" ;;
    -h | --help) echo "$usage"; exit 0 ;;
    *) setting_flag "$1" || die "unknown argument '$1'; $usage" ;;
  esac
  shift
done
[[ $run_name =~ ^[A-Za-z0-9][-A-Za-z0-9_.]*$ ]] || die "--run-name='$run_name' is not valid"
check_settings PROJECT ZONE TPU_NAME REMOTE_DIR DRY_RUN
pid_file="$REMOTE_DIR/logs/$run_name.pid"

on_workers all "$ALIVE
if alive $pid_file; then
  kill -TERM -- \"-\$(cat $pid_file)\" && echo \"\$(hostname): stopped $run_name\"
else
  echo \"\$(hostname): $run_name is not running\"
fi"
