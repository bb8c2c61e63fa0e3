#!/usr/bin/env bash
# Stop the rig: only the PIDs rig-up recorded (checked against their command line, so a reused
# PID is never hit), then every process left in the cgroups the rig created (containerd's shims
# and the containers), then remove those cgroups and unmount what containerd left under the state
# dir (the kubelet's bind-mounted root, pod volumes, pod network namespaces). Then it deletes the
# CNI bridge and the CNI cache entries, restores the kernel settings the kubelet changed and
# removes the host directories the rig created. Logs and PKI are kept. Safe to run when nothing is
# up. `--unmount-only` just unmounts.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

unmount_state() {
    [ -d "$RIG_STATE" ] || return 0
    # mountinfo field 5 is the mount point; deepest first.
    awk -v s="$RIG_STATE/" 'index($5, s) == 1 { print $5 }' /proc/self/mountinfo |
        sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
}
if [ "${1:-}" = --unmount-only ]; then unmount_state; exit 0; fi

ours() { # ours PID: the process is one the rig started (binary from the rig cache or hack dir)
    local cmd
    cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
    [[ "$cmd" == *"$RIG_BIN"* || "$cmd" == *"$RIG_HACK_DIR"* || "$cmd" == *"$RIG_STATE"* ]]
}
stop_pid() { # stop_pid NAME PID [GRACE_TENTHS]
    local name=$1 pid=$2 grace=${3:-100}
    kill -0 "$pid" 2>/dev/null || return 0
    if ! ours "$pid"; then
        rig_log "$name: PID $pid is no longer a rig process; leaving it alone"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq "$grace"); do kill -0 "$pid" 2>/dev/null || { rig_log "stopped $name ($pid)"; return 0; }; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    rig_log "killed $name ($pid) after $((grace / 10))s"
}

if [ -d "$RIG_RUN" ]; then
    # Dependents first; anything else recorded (extra apiservers from tests) before etcd.
    order=(kubelet containerd kube-controller-manager kube-scheduler)
    for f in "$RIG_RUN"/*.pid; do
        [ -e "$f" ] || continue
        n=$(basename "$f" .pid)
        case " ${order[*]} kube-apiserver etcd " in *" $n "*) ;; *) order+=("$n") ;; esac
    done
    order+=(kube-apiserver etcd)
    for n in "${order[@]}"; do
        f="$RIG_RUN/$n.pid"
        [ -e "$f" ] || continue
        # kube-apiserver closes its listeners at once on SIGTERM but its process lingers
        # (seen with v1.37.2); its data is thrown away at the next rig-up, so wait less.
        case "$n" in *apiserver*) g=30 ;; *) g=100 ;; esac
        stop_pid "$n" "$(cat "$f")" "$g"
        rm -f "$f"
    done
fi

# Cgroups the rig created: containerd's own (shims) and the pods' parent in every hierarchy.
# Only when this state dir recorded creating them, so a rig-down for another state dir (or a
# failed rig-up that never got that far) leaves a running rig's cgroups alone.
restore_host() { # put back what rig-up found on the host (recorded under $RIG_HOST_DIR)
    if ip link show "$RIG_CNI_BRIDGE" >/dev/null 2>&1; then
        ip link del "$RIG_CNI_BRIDGE" && rig_log "deleted bridge $RIG_CNI_BRIDGE"
    fi
    # libcni's result cache (fixed path, <network>-<sandbox>-<ifname>): entries of the rig's
    # network, and containerd's loopback entries of the rig's own sandboxes (pods left running).
    rm -f /var/lib/cni/results/dracpu-rig-* 2>/dev/null
    local sb
    for sb in "$RIG_CONTAINERD_ROOT"/io.containerd.grpc.v1.cri/sandboxes/*; do
        [ -e "$sb" ] && rm -f "/var/lib/cni/results/cni-loopback-$(basename "$sb")-lo"
    done
    # The kubelet's per-container log links (fixed path): only those into the rig's state dir.
    if [ -d /var/log/containers ]; then
        find /var/log/containers -maxdepth 1 -type l -lname "$RIG_STATE/*" -delete 2>/dev/null
    fi
    if [ -s "$RIG_HOST_DIR/sysctl.orig" ]; then
        while IFS='=' read -r k v; do
            [ -n "$k" ] || continue
            if [ "$(cat "/proc/sys/${k//.//}")" != "$v" ]; then
                echo "$v" >"/proc/sys/${k//.//}" && rig_log "restored $k=$v"
            fi
        done <"$RIG_HOST_DIR/sysctl.orig"
        rm -f "$RIG_HOST_DIR/sysctl.orig"
    fi
    if [ -s "$RIG_HOST_DIR/created-paths" ]; then
        # Deepest first; only empty directories go (something else may have started using them).
        sort -r "$RIG_HOST_DIR/created-paths" | while read -r d; do
            [ -d "$d" ] || continue
            find "$d" -depth -type d -empty -delete 2>/dev/null
            [ -d "$d" ] && rig_log "left $d in place: not empty"
        done
        rm -f "$RIG_HOST_DIR/created-paths"
    fi
}

cgroups=()
[ -e "$RIG_RUN/runtime-cgroup" ] || { unmount_state; restore_host; rig_log "down"; exit 0; }
for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    for d in "$h$RIG_CGROUP_PARENT" "$h$RIG_CGROUP_PARENT-runtime"; do
        [ -d "$d" ] && cgroups+=("$d")
    done
done
if [ ${#cgroups[@]} -gt 0 ]; then
    for _ in 1 2 3 4 5; do
        pids=$(find "${cgroups[@]}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
        [ -z "$pids" ] && break
        rig_log "killing processes left in rig cgroups: $(echo "$pids" | tr '\n' ' ')"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null
        sleep 0.5
    done
    unmount_state
    for d in "${cgroups[@]}"; do
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
        [ -d "$d" ] && rig_log "could not remove cgroup $d"
    done
fi
unmount_state
restore_host
rm -f "$RIG_RUN/runtime-cgroup"
rig_log "down"
exit 0
