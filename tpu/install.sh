#!/usr/bin/env bash
# Install rmjax on every worker of the slice: code at REPO_REF, a venv, pinned packages
# and jax[tpu] at the version requirements/constraints.txt pins. Safe to run again.
set -euo pipefail
usage="usage: tpu/install.sh [--setting=value ...]"
source "$(dirname "$0")/common.sh"

parse_settings "$usage" "$@"
check_settings PROJECT ZONE TPU_NAME REPO_URL REPO_REF REMOTE_DIR PYTHON JAX_VERSION DRY_RUN

if [[ -n $REPO_URL ]]; then
  fetch="if [ ! -d $REMOTE_DIR/.git ]; then git clone $(printf %q "$REPO_URL") $REMOTE_DIR; fi
cd $REMOTE_DIR && git fetch origin $(printf %q "$REPO_REF") && git checkout --detach FETCH_HEAD"
else  # no URL: ship this checkout's REPO_REF (committed files only) to every worker
  commit="$(git -C "$REPO_ROOT" rev-parse --verify "$REPO_REF^{commit}" 2>/dev/null)" ||
    die "REPO_REF='$REPO_REF' is not a commit of $REPO_ROOT"
  if [[ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no)" ]]; then
    echo "$SCRIPT: warning: uncommitted changes in $REPO_ROOT are not shipped (only $commit)" >&2
  fi
  tmp="$(mktemp -d)"
  trap 'rm -r "$tmp"' EXIT
  git -C "$REPO_ROOT" archive --format=tar.gz -o "$tmp/rmjax-src.tar.gz" "$commit"
  gcloud_run compute tpus tpu-vm scp "$tmp/rmjax-src.tar.gz" "$TPU_NAME:rmjax-src.tar.gz" \
    --project="$PROJECT" --zone="$ZONE" --worker=all
  fetch="mkdir -p $REMOTE_DIR && tar -xzf rmjax-src.tar.gz -C $REMOTE_DIR && rm rmjax-src.tar.gz
cd $REMOTE_DIR"
fi

on_workers all "set -euo pipefail
if ! command -v $PYTHON >/dev/null; then
  sudo apt-get update -q && sudo apt-get install -y -q $PYTHON $PYTHON-venv
fi
$fetch
if [ ! -x .venv/bin/python ]; then $PYTHON -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e . -c requirements/constraints.txt
.venv/bin/pip install -q 'jax[tpu]==$JAX_VERSION' -c requirements/constraints.txt
.venv/bin/python -c 'import jax; print(\"worker\", jax.process_index(), \"sees\", jax.device_count(), \"devices\")'"
