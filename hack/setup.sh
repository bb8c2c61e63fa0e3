#!/usr/bin/env bash
# Install everything the Python side needs on a fresh machine: uv and just (PyPI), then the
# locked dependency set into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
need_pip=()
command -v uv >/dev/null 2>&1 || need_pip+=("uv==0.13.8")
command -v just >/dev/null 2>&1 || need_pip+=("rust-just==1.59.0")
if ((${#need_pip[@]})); then
    python3 -m pip install --quiet --disable-pip-version-check "${need_pip[@]}"
    command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi
uv sync --frozen --python "$(command -v python3)" --quiet
echo "setup: .venv ready ($(.venv/bin/python --version))"
