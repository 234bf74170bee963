#!/usr/bin/env bash
# Everything CI checks, from a fresh machine: set-up, lint, types, then the whole test suite
# (unit tests, the Ultralytics reference comparison, and integration tests against real servers).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh train,dev
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
