#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, generated-code check, helm + chart check, unit and
# property tests, then the rig and the e2e tests against real components. The rig is always torn down.
set -euo pipefail
cd "$(dirname "$0")/.."
just lint
if just --summary | tr ' ' '\n' | grep -qx gen-check; then just gen-check; fi
# helm (built from its Go module, cached) for the chart tests; manifests in step with the chart.
just tools
just manifests-check
if just --summary | tr ' ' '\n' | grep -qx rig-up; then
    trap 'just rig-down || true' EXIT
    just rig-build
    just rig-up
    .venv/bin/python -m pytest "$@"
else
    .venv/bin/python -m pytest -m "not e2e" "$@"
fi
