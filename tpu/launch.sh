#!/usr/bin/env bash
# Start the same command on every worker at once, detached (nohup, in its own process
# group), each worker writing REMOTE_DIR/logs/RUN_NAME.log. The rmjax CLI joins the
# workers (jax.distributed) itself.
set -euo pipefail
usage="usage: tpu/launch.sh [--run-name=NAME] [--setting=value ...] [--] COMMAND [ARGS...]
  e.g. tpu/launch.sh -- rmjax train-rm --config=experiments/configs/pod_llama3_8b_rm.py
  (prefix the command with env VAR=value to set environment variables)"
source "$(dirname "$0")/common.sh"
: "${RUN_NAME:=$(date -u +%Y%m%d-%H%M%S)}"

while (($#)); do
  case "$1" in
    --) shift; break ;;
    --run-name=*) RUN_NAME="${1#*=}" ;;
    -h | --help) echo "$usage"; exit 0 ;;
    -*) setting_flag "$1" || die "unknown argument '$1'; $usage" ;;
    *) break ;;
  esac
  shift
done
(($#)) || die "no command to launch; $usage"
[[ $RUN_NAME =~ ^[A-Za-z0-9][-A-Za-z0-9_.]*$ ]] ||
  die "RUN_NAME='$RUN_NAME' is not valid (letters, digits, - _ . only)"
check_settings PROJECT ZONE TPU_NAME REMOTE_DIR DRY_RUN
echo "  RUN_NAME         = $RUN_NAME" >&2
command_line="$(printf '%q ' "$@")"
echo "  command          = $command_line" >&2

on_workers all "set -euo pipefail
$ALIVE
cd $REMOTE_DIR && mkdir -p logs
if alive logs/latest.pid; then
  echo \"\$(hostname): \$(readlink logs/latest.pid) is still running; tpu/stop.sh stops it\" >&2
  exit 1
fi
export PATH=\"\$PWD/.venv/bin:\$PATH\"
# every worker joins jax.distributed (JAX detects the TPU slice's workers itself)
export RMJAX_DISTRIBUTED=\"\${RMJAX_DISTRIBUTED:-on}\"
nohup setsid ${command_line}> logs/$RUN_NAME.log 2>&1 < /dev/null &
echo \$! > logs/$RUN_NAME.pid
ln -sfn $RUN_NAME.log logs/latest.log && ln -sfn $RUN_NAME.pid logs/latest.pid
echo \"\$(hostname): started $RUN_NAME (pid \$!)\""
echo "$SCRIPT: follow it with tpu/logs.sh --run-name=$RUN_NAME" >&2
