#!/usr/bin/env bash
# Build (or reuse) the deploy tools from their pinned Go modules into ~/.cache/dracpu/tools:
# helm (hack/tools/helm/go.mod). Prints the path of the tools directory. Idempotent, nice'd.
set -euo pipefail
cd "$(dirname "$0")"
HELM_VERSION=$(awk '$1 == "helm.sh/helm/v3" {print $2}' helm/go.mod)
TOOLS="${DRACPU_TOOLS:-$HOME/.cache/dracpu/tools}"
mkdir -p "$TOOLS"
bin="$TOOLS/helm-$HELM_VERSION"
if [ ! -x "$bin" ]; then
    echo "tools: building helm $HELM_VERSION (a few minutes when cold)" >&2
    t0=$(date +%s)
    (cd helm && GOTOOLCHAIN=local GOFLAGS="-trimpath -mod=mod" CGO_ENABLED=0 nice -n 10 \
        go build -o "$bin.tmp" \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
        helm.sh/helm/v3/cmd/helm)
    mv "$bin.tmp" "$bin"
    echo "tools: built helm in $(( $(date +%s) - t0 ))s" >&2
fi
ln -sfn "helm-$HELM_VERSION" "$TOOLS/helm"
echo "$TOOLS"
