#!/usr/bin/env bash
# The test command: set up (if needed), lint, then the default test suite (slow tests: add `-m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
ruff format --check .
ALIGNMENT_NO_PROGRESS=1 python -m pytest -q "$@"
