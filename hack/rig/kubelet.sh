#!/usr/bin/env bash
# Start, stop or restart the rig's kubelet (the rig's node). rig-up writes its configuration
# (kubelet-config.yaml, kubelet.kubeconfig, node-ip) first and calls `kubelet.sh start`; tests
# call `kubelet.sh restart` to check what survives a kubelet restart. `start` returns once the
# kubelet's healthz answers; `stop` sends SIGTERM and waits (SIGKILL after 10 s).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
rig_close_inherited_fds  # daemons started here must not hold the rig lock (see lib.sh)

pid_file="$RIG_RUN/kubelet.pid"
log="$RIG_LOGS/kubelet.log"

alive() { [ -e "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; }

start() {
    alive && rig_die "kubelet: already running (pid $(cat "$pid_file"))"
    [ -s "$RIG_STATE/kubelet-config.yaml" ] || rig_die "kubelet: no config (run \`just rig-up\`)"
    local node_ip; node_ip=$(cat "$RIG_STATE/node-ip")
    setsid "$RIG_BIN/kubelet" --config="$RIG_STATE/kubelet-config.yaml" \
        --kubeconfig="$RIG_STATE/kubelet.kubeconfig" --root-dir="$RIG_KUBELET_ROOT" \
        --hostname-override="$RIG_NODE_NAME" --node-ip="$node_ip" --v=2 \
        >>"$log" 2>&1 </dev/null &
    echo $! >"$pid_file"
    local deadline=$(( $(date +%s) + 30 ))
    until curl -fsS --max-time 1 "http://127.0.0.1:$RIG_KUBELET_HEALTHZ_PORT/healthz" \
        >/dev/null 2>&1; do
        if ! alive; then
            tail -n 30 "$log" >&2
            rig_die "kubelet: exited at start (log $log)"
        fi
        [ "$(date +%s)" -lt "$deadline" ] || { tail -n 30 "$log" >&2; rig_die "kubelet: healthz not ok after 30s"; }
        sleep 0.2
    done
}

stop() {
    alive || { rm -f "$pid_file"; return 0; }
    local pid; pid=$(cat "$pid_file")
    [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == "$RIG_BIN/kubelet "* ]] ||
        { rig_log "kubelet: pid $pid is no longer the rig's kubelet; leaving it alone"; rm -f "$pid_file"; return 0; }
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; return 0; }; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pid_file"
    rig_log "kubelet: killed after 10s"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    *) echo "usage: $0 start|stop|restart" >&2; exit 2 ;;
esac
