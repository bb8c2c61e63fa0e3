#!/usr/bin/env bash
# Set up a fresh machine for dracpu: the pinned just and uv in a local venv .tools/ (PyPI, no
# system-wide pip, so it works where the system Python refuses pip: PEP 668), then the locked
# dependency set into .venv. Needs python3 >= 3.11 with the venv module (Debian/Ubuntu:
# python3-venv, installed here when missing and running as root). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
JUST_VERSION=1.59.0
UV_VERSION=0.13.8
python=$(command -v python3) || { echo "setup: python3 not found" >&2; exit 1; }
tools=.tools

have() { [ -x "$tools/bin/$1" ] && "$tools/bin/$1" --version 2>/dev/null | grep -q " $2\b"; }
if ! have just "$JUST_VERSION" || ! have uv "$UV_VERSION"; then
    echo "setup: just $JUST_VERSION and uv $UV_VERSION into $tools/ ($("$python" --version))" >&2
    rm -rf "$tools"
    if ! "$python" -m venv "$tools" >/dev/null 2>&1; then
        rm -rf "$tools"
        # Debian/Ubuntu ship venv's ensurepip separately.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "setup: apt-get install python3-venv" >&2
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$python" -m venv "$tools"
        else
            echo "setup: '$python -m venv' failed: install python3-venv (Debian/Ubuntu)" >&2
            exit 1
        fi
    fi
    "$tools/bin/pip" install --quiet --disable-pip-version-check \
        "rust-just==$JUST_VERSION" "uv==$UV_VERSION"
fi
"$tools/bin/uv" sync --frozen --python "$python" --quiet
echo "setup: .venv ready ($(.venv/bin/python --version)); tools in $tools/bin (just, uv)"
