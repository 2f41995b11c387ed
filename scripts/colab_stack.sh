#!/usr/bin/env bash
# Build .venv-colab: this project's environment with Google Colab's kernel stack on top.
# Usage: bash scripts/colab_stack.sh   (run by scripts/test.sh; does nothing when up to date)
#
# .venv-colab holds only the packages pinned in tests/colab-stack.txt; a .pth file then adds
# the project's environment (the active venv, else .venv) behind them, so Colab's ipykernel,
# IPython, ipywidgets… shadow the newer ones and everything else (torch, vqclip) is shared.
# The Colab-stack tests start their kernels with .venv-colab/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
pins=tests/colab-stack.txt
base=${VIRTUAL_ENV:-$PWD/.venv}
[ -x "$base/bin/python" ] || { echo "no environment at $base: run scripts/setup.sh --test first" >&2; exit 1; }
stamp=.venv-colab/colab-stack.txt
if [ -x .venv-colab/bin/python ] && cmp -s "$pins" "$stamp" \
  && grep -qF "$base" .venv-colab/base.txt 2>/dev/null; then
  exit 0  # already built from these pins on this environment
fi
rm -rf .venv-colab
"$base/bin/python" -m venv --without-pip .venv-colab
site=$(.venv-colab/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
base_site=$("$base/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
# The pins alone (--no-deps): their other dependencies come from the project's environment.
"$base/bin/python" -m pip install --quiet --no-deps --no-compile --target "$site" -r "$pins"
# addsitedir also runs the .pth files there (vqclip's editable install, a shared venv).
echo "import site; site.addsitedir('$base_site')" > "$site/zz_project_env.pth"
echo "$base" > .venv-colab/base.txt
# Check what it imports: each pinned version, from .venv-colab.
.venv-colab/bin/python - "$pins" "$site" <<'PY'
import importlib.metadata as md, re, sys
pins, site = sys.argv[1], sys.argv[2]
wrong = []
for line in open(pins):
    m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
    if m:
        name, want = m.groups()
        dist = md.distribution(name)
        where = str(dist.locate_file(""))
        if dist.version != want or not where.startswith(site):
            wrong.append(f"{name} {dist.version} at {where}, wanted {want}")
import IPython, ipykernel, ipywidgets, jupyter_client, jupyter_ui_poll, vqclip  # noqa: F401
if wrong:
    sys.exit("the Colab stack did not take: " + "; ".join(wrong))
PY
cp "$pins" "$stamp"
echo "Colab's kernel stack ($pins) is in .venv-colab"
