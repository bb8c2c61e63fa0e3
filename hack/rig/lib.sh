# shellcheck shell=bash
# Shared locations and helpers for the rig scripts (sourced, not run). tests/e2e/rig.py mirrors
# these paths; keep the two in step.
RIG_HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$RIG_HACK_DIR/versions.env"
RIG_CACHE_ROOT="${DRACPU_RIG_CACHE:-$HOME/.cache/dracpu/rig}"
RIG_BIN="$RIG_CACHE_ROOT/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-containerd-$CONTAINERD_VERSION/bin"
RIG_STATE="${DRACPU_RIG_STATE:-/var/lib/dracpu-rig}"
RIG_RUN="$RIG_STATE/run"
RIG_LOGS="$RIG_STATE/logs"
RIG_PKI="$RIG_STATE/pki"
RIG_KUBECONFIG="$RIG_STATE/admin.kubeconfig"
RIG_APISERVER_PORT="${DRACPU_RIG_APISERVER_PORT:-16443}"
RIG_ETCD_CLIENT_PORT="${DRACPU_RIG_ETCD_PORT:-12379}"
RIG_ETCD_PEER_PORT=$((RIG_ETCD_CLIENT_PORT + 1))
RIG_SCHEDULER_PORT=10259
RIG_KCM_PORT=10257
RIG_NODE_NAME="${DRACPU_RIG_NODE:-dracpu-rig-node}"
RIG_CONTAINERD_ROOT="$RIG_STATE/containerd/root"
RIG_CONTAINERD_STATE="$RIG_STATE/containerd/state"
RIG_CRI_SOCKET="$RIG_RUN/containerd.sock"
RIG_NRI_SOCKET="$RIG_RUN/nri.sock"
RIG_CDI_DIR="$RIG_STATE/cdi"
RIG_CGROUP_PARENT="dracpu-rig"

rig_log() { printf 'rig: %s\n' "$*" >&2; }
rig_die() { printf 'rig: ERROR: %s\n' "$*" >&2; exit 1; }
