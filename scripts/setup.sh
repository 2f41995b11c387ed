#!/usr/bin/env bash
# Set up vqclip: a virtual environment in .venv (unless one is active) with vqclip installed.
# Usage: bash scripts/setup.sh [--test]   (--test adds what the test suite needs)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install --quiet --upgrade pip "setuptools<81" wheel
extra=()
if [ "${1:-}" = "--test" ]; then extra=(-r requirements-test.txt); fi
python -m pip install --quiet -r requirements.txt "${extra[@]}" -e .
echo "vqclip is installed in $(dirname "$(dirname "$(command -v python)")")"
