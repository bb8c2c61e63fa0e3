#!/usr/bin/env bash
# `just deploy` / `just undeploy`: install or remove the dracpu chart.
#   hack/deploy.sh deploy [helm args...]   build the image, make it available to the cluster's
#                                          runtime, then helm upgrade --install (waits for ready)
#   hack/deploy.sh undeploy                helm uninstall (running workloads are left alone)
# Which cluster, in order:
#   1. KUBECONFIG when set (the rig's settings are added when it is the rig's kubeconfig);
#   2. the rig, when it is up (/var/lib/dracpu-rig/admin.kubeconfig): the image goes into its
#      containerd (namespace k8s.io) and the chart gets the rig's paths and an explicit API
#      endpoint (the rig has no kube-proxy, so pods cannot use the kubernetes Service);
#   3. ~/.kube/config when its cluster answers;
#   4. else kind, when installed: a cluster `dracpu` from deploy/kind.yaml is created if
#      missing (kubeconfig ~/.cache/dracpu/kind.kubeconfig) and the image loaded with
#      `kind load image-archive`.
# DRACPU_IMAGE_ARCHIVE skips the build and uses that archive.
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?usage: hack/deploy.sh deploy|undeploy [helm args...]}
shift
helm="$(hack/tools/build.sh)/helm"
release=dracpu namespace=kube-system kind_cluster=dracpu
log() { printf 'deploy: %s\n' "$*" >&2; }

# shellcheck source=rig/lib.sh
source hack/rig/lib.sh
target=
if [ -n "${KUBECONFIG:-}" ]; then
    target=kubeconfig
    [ "$(realpath -m "$KUBECONFIG")" = "$(realpath -m "$RIG_KUBECONFIG")" ] && target=rig
elif [ -d "$RIG_STATE" ] && [ -s "$RIG_KUBECONFIG" ]; then
    target=rig
    export KUBECONFIG="$RIG_KUBECONFIG"
else
    export KUBECONFIG="$HOME/.kube/config"
    target=kubeconfig
    if command -v kind >/dev/null 2>&1 && ! "$helm" list -n "$namespace" -q >/dev/null 2>&1; then
        target=kind
        export KUBECONFIG="${DRACPU_KIND_KUBECONFIG:-$HOME/.cache/dracpu/kind.kubeconfig}"
    fi
fi
log "target: $target (KUBECONFIG=$KUBECONFIG)"

reachable() { "$helm" list -n "$namespace" -q >/dev/null 2>&1; }
unreachable() {
    log "cluster of $KUBECONFIG unreachable: $("$helm" list -n "$namespace" -q 2>&1 | tail -1)"
    exit 1
}

if [ "$action" = undeploy ]; then
    reachable || unreachable
    if "$helm" status "$release" -n "$namespace" >/dev/null 2>&1; then
        "$helm" uninstall "$release" -n "$namespace" --wait --timeout 2m
    else
        log "no release $release in $namespace"
    fi
    exit 0
fi
[ "$action" = deploy ] || { log "unknown action $action"; exit 2; }
# Fail before the image build when the cluster is not there (kind creates its own below).
[ "$target" = kind ] || reachable || unreachable

archive="${DRACPU_IMAGE_ARCHIVE:-}"
if [ -z "$archive" ]; then archive="$(hack/image/build.sh)"; fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
values=(--set "image.repository=localhost/dracpu" --set "image.tag=$version")

case "$target" in
rig)
    [ -S "$RIG_CRI_SOCKET" ] || { log "the rig is not up ($RIG_CRI_SOCKET missing): just rig-up"; exit 1; }
    [ -n "${RIG_KUBELET_ROOT:-}" ] || { log "this rig has no kubelet (RIG_KUBELET_ROOT unset)"; exit 1; }
    log "importing $archive into the rig's containerd (namespace k8s.io)"
    "$RIG_BIN/ctr" --address "$RIG_CRI_SOCKET" -n k8s.io images import "$archive" >&2
    values+=(
        --set "apiServer.host=127.0.0.1" --set "apiServer.port=$RIG_APISERVER_PORT"
        --set "kubeletRootDir=$RIG_KUBELET_ROOT" --set "cdiDir=$RIG_CDI_DIR"
        --set "nriSocket=$RIG_NRI_SOCKET" --set "stateDir=$RIG_STATE/dracpu"
        --set "image.pullPolicy=Never"
    )
    ;;
kind)
    if ! kind get clusters 2>/dev/null | grep -qx "$kind_cluster"; then
        log "creating kind cluster $kind_cluster from deploy/kind.yaml"
        kind create cluster --name "$kind_cluster" --config deploy/kind.yaml --kubeconfig "$KUBECONFIG"
    fi
    log "loading $archive into kind cluster $kind_cluster"
    kind load image-archive "$archive" --name "$kind_cluster"
    values+=(--set "image.pullPolicy=Never")
    ;;
kubeconfig)
    log "the image $archive must be available to the cluster's nodes (it is not pushed anywhere)"
    ;;
esac

log "helm upgrade --install $release ($namespace)"
"$helm" upgrade --install "$release" deploy/helm/dracpu -n "$namespace" \
    --wait --timeout 3m "${values[@]}" "$@"
log "deployed: helm status $release -n $namespace"
