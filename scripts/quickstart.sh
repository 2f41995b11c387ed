#!/usr/bin/env bash
# Set everything up, then make an image: bash scripts/quickstart.sh "a prompt" [vqclip generate flags]
# The first run downloads the default models (about 1 GB for the VQGAN, 340 MB for CLIP).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
exec vqclip generate "${@:-a watercolor painting of a lighthouse:1 | fog:0.4}"
