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
    trap 'just undeploy >/dev/null 2>&1 || true; just rig-down || true' EXIT
    just rig-build
    just rig-up
    # Phase 1: everything but the deployed chart. The e2e daemon tests start `dracpu run` as the
    # node's dra.cpu driver themselves, so no DaemonSet may register the same driver meanwhile.
    # Unit, property and real-peer tests on both cores (pytest-xdist), then the e2e tests one at
    # a time: they share the one rig node.
    deployed=tests/e2e/test_deployed_driver.py
    .venv/bin/python -m pytest -m "not e2e" -n 2 "$@"
    .venv/bin/python -m pytest -m e2e --ignore="$deployed" "$@"
    # Phase 2: the image (podman + mmdebstrap, cached in ~/.cache/dracpu/image), the chart on the
    # rig, the deployed-driver tests, then the chart removed again.
    archive="$(just image | tail -n 1)"
    export DRACPU_IMAGE_ARCHIVE="$archive"
    just deploy
    .venv/bin/python -m pytest "$deployed" "$@"
    just undeploy
else
    .venv/bin/python -m pytest -m "not e2e" -n 2 "$@"
fi
