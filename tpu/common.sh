# Shared settings and helpers for the tpu/ scripts; sourced, never run.
#
# Every setting comes from the environment or from a flag --setting-name=value
# (--zone=us-east5-a sets ZONE); the defaults are below. Each script prints the
# settings it uses before it does anything.
# shellcheck shell=bash

TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$TPU_DIR")"
SCRIPT="tpu/$(basename "$0")"

: "${PROJECT:=}"                          # GCP project id (required)
: "${ZONE:=us-east5-a}"                   # a zone with v5p capacity
: "${TPU_NAME:=rmjax}"                    # TPU VM (and queued resource) name
: "${ACCELERATOR_TYPE:=v5p-8}"            # slice shape; v5p-64 is 8 hosts of 4 chips
: "${RUNTIME_VERSION:=v2-alpha-tpuv5}"    # TPU VM image for v5p
: "${QUEUED:=0}"                          # 1: a queued resource instead of a direct create
: "${SPOT:=0}"                            # 1: spot capacity (cheaper, can be preempted)
: "${VALID_FOR:=}"                        # queued: give up after this long (e.g. 12h)
: "${POLL_SECONDS:=60}"                   # queued: seconds between state checks
: "${WAIT_TIMEOUT:=21600}"                # queued: seconds to wait for ACTIVE
: "${REPO_URL:=}"                         # git URL to clone; empty ships this checkout
: "${REPO_REF:=HEAD}"                     # branch, tag or commit to install
: "${REMOTE_DIR:=rmjax}"                  # checkout on each worker, under the home dir
: "${PYTHON:=python3.11}"                 # interpreter for the workers' venv
: "${JAX_VERSION:=$(sed -n 's/^jax==//p' "$REPO_ROOT/requirements/constraints.txt")}"
: "${BUCKET:=}"                           # gs://name[/prefix] that mount_bucket.sh mounts
: "${DRY_RUN:=0}"                         # 1: print gcloud commands without running them

SETTINGS=(PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION QUEUED SPOT VALID_FOR
          POLL_SECONDS WAIT_TIMEOUT REPO_URL REPO_REF REMOTE_DIR PYTHON JAX_VERSION BUCKET DRY_RUN)

die() {
  echo "$SCRIPT: $*" >&2
  exit 1
}

# setting_flag ARG: if ARG is --some-setting=value for a known setting, set it.
setting_flag() {
  [[ $1 == --*=* ]] || return 1
  local name="${1%%=*}"
  name="${name#--}"
  name="${name^^}"
  name="${name//-/_}"
  [[ " ${SETTINGS[*]} " == *" $name "* ]] || return 1
  printf -v "$name" '%s' "${1#*=}"
}

# parse_settings USAGE ARG...: the arguments of a script that takes only --setting=value
# and --help.
parse_settings() {
  local usage="$1"
  shift
  while (($#)); do
    case "$1" in
      -h | --help) echo "$usage"; exit 0 ;;
      *) setting_flag "$1" || die "unknown argument '$1'; $usage" ;;
    esac
    shift
  done
}

# check_settings NAME...: validate and print the named settings.
check_settings() {
  local name
  echo "$SCRIPT settings:" >&2
  for name in "$@"; do
    check_setting "$name"
    printf '  %-16s = %s\n' "$name" "${!name}" >&2
  done
}

check_setting() {
  local name="$1" value="${!1}" pattern
  case "$name" in
    PROJECT)
      [[ -n $value ]] || die "PROJECT is not set: export PROJECT=\$(gcloud config get-value project) or pass --project=ID"
      pattern='^[a-z][-a-z0-9]{4,28}[a-z0-9]$' ;;
    ZONE) pattern='^[a-z]+-[a-z]+[0-9]+-[a-z]$' ;;
    TPU_NAME) pattern='^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$' ;;
    ACCELERATOR_TYPE) pattern='^v[0-9]+[a-z]*-[0-9]+$' ;;
    QUEUED | SPOT | DRY_RUN) pattern='^[01]$' ;;
    POLL_SECONDS | WAIT_TIMEOUT) pattern='^[0-9]+$' ;;
    VALID_FOR) pattern='^([0-9]+[smhd])*$' ;;
    REMOTE_DIR) pattern='^[A-Za-z0-9_][-A-Za-z0-9_./]*$' ;;
    JAX_VERSION) pattern='^[0-9]+(\.[0-9]+)+$' ;;
    BUCKET)
      [[ -n $value ]] || die "BUCKET is not set: export BUCKET=gs://your-bucket or pass --bucket=gs://..."
      pattern='^gs://[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9](/[-A-Za-z0-9_.]+)*/?$' ;;
    *) pattern='^[^[:space:]]*$' ;;
  esac
  [[ $value =~ $pattern ]] || die "$name='$value' is not valid (expected to match $pattern)"
}

# gcloud_run ARGS...: echo the gcloud command, then run it unless DRY_RUN=1.
gcloud_run() {
  printf '+ gcloud' >&2
  printf ' %q' "$@" >&2
  printf '\n' >&2
  [[ $DRY_RUN == 1 ]] || gcloud "$@"
}

# on_workers WORKER COMMAND: run a shell command on one worker (0, 1, ...) or all.
on_workers() {
  gcloud_run compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --worker="$1" --command="$2"
}

# A remote shell test, true while the process in pid file $1 runs (not a zombie).
# shellcheck disable=SC2016,SC2034  # expanded on the worker; used by launch.sh, stop.sh
ALIVE='alive() { case "$(ps -o stat= -p "$(cat "$1" 2>/dev/null)" 2>/dev/null)" in "" | Z*) return 1 ;; esac; }'

check_worker() {
  [[ $1 =~ ^(all|[0-9]+)$ ]] || die "--worker='$1' is not valid (a worker number or all)"
}
