#!/usr/bin/env bash
# Sets up (scripts/bootstrap.sh) and runs the whole test suite and the linter.
# Extra arguments go to pytest, e.g. scripts/test.sh -k replay
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/python -m pytest "$@"
