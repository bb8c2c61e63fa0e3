#!/usr/bin/env bash
# Restart the rig's containerd (shims and containers keep running): SIGTERM the recorded PID
# (SIGKILL after 10 s), start it again with the same config in the rig's runtime cgroup, and
# return once CRI answers and the NRI socket exists. Tests call it to check what survives a
# containerd restart (`just rig-containerd-restart`).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
rig_close_inherited_fds  # daemons started here must not hold the rig lock (see lib.sh)

pid_file="$RIG_RUN/containerd.pid"
log="$RIG_LOGS/containerd.log"
CTR=("$RIG_BIN/ctr" --address "$RIG_CRI_SOCKET" -n k8s.io)

[ -s "$pid_file" ] || rig_die "containerd: no PID file (run \`just rig-up\`)"
pid=$(cat "$pid_file")
if kill -0 "$pid" 2>/dev/null; then
    [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"$RIG_BIN/containerd "* ]] ||
        rig_die "containerd: pid $pid is not the rig's containerd"
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; rig_log "containerd: killed after 10s"; }
fi
cg=$(cat "$RIG_RUN/runtime-cgroup")
setsid sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" \
    env PATH="$RIG_BIN:$PATH" "$RIG_BIN/containerd" --config "$RIG_STATE/containerd.toml" \
    >>"$log" 2>&1 </dev/null &
echo $! >"$pid_file"
deadline=$(( $(date +%s) + 60 ))
cri_up() { "${CTR[@]}" plugins ls 2>/dev/null | grep -Eq '^io\.containerd\.grpc\.v1 +cri +.* ok *$'; }
until cri_up && [ -S "$RIG_NRI_SOCKET" ]; do
    kill -0 "$(cat "$pid_file")" 2>/dev/null || { tail -n 30 "$log" >&2; rig_die "containerd: exited at start"; }
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 30 "$log" >&2; rig_die "containerd: CRI not up after 60s"; }
    sleep 0.2
done
