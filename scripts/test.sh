#!/usr/bin/env bash
# Set everything up, then lint and run the test suite: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# shellcheck disable=SC1091
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
# Two cores: oversubscribed threads make torch many times slower, so one thread each.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
ruff check .
ruff format --check .
python -m pytest "$@"
