#!/usr/bin/env bash
# Show each rig process (recorded PID, alive or not) and where everything is. Exit 1 if not up.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
REPO="$(cd "$RIG_HACK_DIR/../.." && pwd)"
PY="${DRACPU_PYTHON:-$REPO/.venv/bin/python}"
for c in etcd kube-apiserver kube-scheduler kube-controller-manager containerd kubelet; do
    f="$RIG_RUN/$c.pid"
    if [ -e "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then s="running pid $(cat "$f")"
    elif [ -e "$f" ]; then s="DEAD (pid $(cat "$f"))"; else s="not started"; fi
    printf '  %-24s %s\n' "$c" "$s"
done
# Which config the running containerd has: containerd-restart.sh --nri=off switches it.
nri_state="NRI on"
cmd=$(tr '\0' ' ' <"/proc/$(cat "$RIG_RUN/containerd.pid" 2>/dev/null)/cmdline" 2>/dev/null || true)
[[ "$cmd" == *containerd-nri-off.toml* ]] && nri_state="NRI OFF: containerd-nri-off.toml"
cat <<EOF2
  versions                 kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION, containerd $CONTAINERD_VERSION, runc $(runc --version 2>/dev/null | head -1 | awk '{print $3}')
  binaries                 $RIG_BIN
  state                    $RIG_STATE
  logs                     $RIG_LOGS/<component>.log
  KUBECONFIG               $RIG_KUBECONFIG
  apiserver                https://127.0.0.1:$RIG_APISERVER_PORT
  etcd                     http://127.0.0.1:$RIG_ETCD_CLIENT_PORT
  node (kubelet)           $RIG_NODE_NAME, InternalIP $(cat "$RIG_STATE/node-ip" 2>/dev/null), kubelet root $RIG_KUBELET_ROOT
  kubelet plugins          $RIG_KUBELET_ROOT/plugins_registry (registration), $RIG_KUBELET_ROOT/plugins (DRA sockets)
  pod logs                 $RIG_POD_LOGS
  pod network              CNI bridge $RIG_CNI_BRIDGE, $RIG_POD_CIDR (pods reach each other only)
  CRI socket               $RIG_CRI_SOCKET
  NRI socket               $RIG_NRI_SOCKET ($nri_state)
  CDI spec dir             $RIG_CDI_DIR
  feature gates            $(cat "$RIG_STATE/feature-gates" 2>/dev/null)
EOF2
if (cd "$REPO" && "$PY" -m tests.e2e.rig is-up); then echo "rig: UP"; else echo "rig: DOWN"; exit 1; fi
