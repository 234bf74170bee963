#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for edge-agent: system packages, then .venv with the
# package and the extras named in $1 (default "dev"; tests use "train,dev").
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"

if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  mapfile -t packages < <(grep -vE '^[[:space:]]*(#|$)' .ci/apt-packages.txt)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch goes into the same pip call as ultralytics (train extra): installed in a separate, later
# step, ultralytics would replace a CPU build of torch with a multi-GB CUDA one. TORCH_SPEC lets a
# GPU box choose its own build.
torch_spec=()
case ",$extras," in *,train,*) torch_spec=("${TORCH_SPEC:-torch==2.13.0}") ;; esac
.venv/bin/python -m pip install -q "${torch_spec[@]}" -e ".[$extras]"
