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
# Google Colab's kernel stack (tests/colab-stack.txt) in .venv-colab: the real-kernel tests
# (tests/test_colab_stack.py, tests/test_foreground.py) run on it and on this environment's.
# Without a package index it cannot be built: those tests then skip (CI sets
# VQCLIP_REQUIRE_COLAB_STACK=1, and they fail instead).
if ! bash scripts/colab_stack.sh; then
  [ "${VQCLIP_REQUIRE_COLAB_STACK:-}" != 1 ] || exit 1
  echo "Colab's kernel stack could not be built: its tests will skip" >&2
fi
python -m pytest "$@"
