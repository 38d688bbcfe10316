#!/usr/bin/env bash
# Stream a run's log from worker 0 (or another worker, or all of them interleaved).
set -euo pipefail
usage="usage: tpu/logs.sh [--worker=N|all] [--run-name=NAME] [--no-follow] [--setting=value ...]"
source "$(dirname "$0")/common.sh"
worker=0
run_name=latest
follow=1

while (($#)); do
  case "$1" in
    --worker=*) worker="${1#*=}" ;;
    --run-name=*) run_name="${1#*=}" ;;
    --no-follow) follow=0 ;;
    -h | --help) echo "$usage"; exit 0 ;;
    *) setting_flag "$1" || die "unknown argument '$1'; $usage" ;;
  esac
  shift
done
check_worker "$worker"
[[ $run_name =~ ^[A-Za-z0-9][-A-Za-z0-9_.]*$ ]] || die "--run-name='$run_name' is not valid"
check_settings PROJECT ZONE TPU_NAME REMOTE_DIR DRY_RUN
log="$REMOTE_DIR/logs/$run_name.log"
if [[ $follow == 1 ]]; then tail="tail -n +1 -F $log"; else tail="tail -n 200 $log"; fi

on_workers "$worker" "if [ ! -e $log ]; then echo \"\$(hostname): no log $log (launch a run first)\" >&2; exit 1; fi
$tail"
