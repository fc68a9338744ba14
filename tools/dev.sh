#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating and installing it on first use
# (and again whenever pyproject.toml changes). Usage: bash tools/dev.sh seediff --help
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SEEDIFF_VENV:-$root/.venv}"
stamp="$venv/.seediff-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "seediff: setting up $venv (first run only)" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    # torch first and pinned: an unpinned torch (or one pulled in by diffusers) is a CUDA build of
    # several GB. 2.13.0 is a CPU build here; on a GPU machine PyPI's 2.13.0 is the CUDA one.
    "$venv/bin/python" -m pip install -q "torch==${SEEDIFF_TORCH_VERSION:-2.13.0}"
  fi
  "$venv/bin/python" -m pip install -q -e "$root[backend,test]"
  touch "$stamp"
fi
# The browser test drives Debian's Chromium through its chromedriver (the test downloads nothing).
if [ "${1:-}" = pytest ] && ! { command -v chromium && command -v chromedriver; } >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  echo "seediff: installing Debian's chromium and chromium-driver for the browser test" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
    || echo "seediff: could not install them; the browser test will say how" >&2
fi
cd "$root"
export PATH="$venv/bin:$PATH"
exec "$@"
