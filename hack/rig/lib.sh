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
# The kubelet (the rig's node) and pod networking.
RIG_KUBELET_ROOT="$RIG_STATE/kubelet"
RIG_KUBELET_PORT=10250
RIG_KUBELET_HEALTHZ_PORT=10248
RIG_POD_LOGS="$RIG_STATE/pod-logs"
RIG_CNI_DIR="$RIG_STATE/cni"
RIG_CNI_PLUGIN_DIR=/usr/lib/cni
RIG_CNI_BRIDGE="dracpu-rig0"
RIG_POD_CIDR="${DRACPU_RIG_POD_CIDR:-10.244.0.0/24}"
# What rig-up found on the host before changing it (kernel settings, directories it created);
# rig-down puts it back. Outside run/ because rig-up clears run/.
RIG_HOST_DIR="$RIG_STATE/host"
# Kernel settings the kubelet changes at start (it has no warn-only mode).
RIG_KUBELET_SYSCTLS="vm.overcommit_memory kernel.panic kernel.panic_on_oops"
# Host paths the kubelet or containerd's CNI code create outside the state dir.
RIG_HOST_PATHS="/var/log/containers /var/log/pods /var/lib/cni /run/netns"

rig_log() { printf 'rig: %s\n' "$*" >&2; }
rig_die() { printf 'rig: ERROR: %s\n' "$*" >&2; exit 1; }

# Close every descriptor above stderr this shell inherited (bash's own 255 excepted), so the
# daemons a rig script starts do not keep them: started under `flock /var/lock/dracpu-rig.lock`,
# containerd kept the lock's descriptor and held the shared rig lock for as long as it ran.
rig_close_inherited_fds() {
    local fd
    for fd in $(ls "/proc/$$/fd"); do
        if [ "$fd" -gt 2 ] && [ "$fd" -lt 255 ]; then eval "exec $fd>&-"; fi
    done
}
