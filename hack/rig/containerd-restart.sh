#!/usr/bin/env bash
# Restart the rig's containerd (shims and containers keep running): SIGTERM the recorded PID
# (SIGKILL after 10 s), start it again with the same config in the rig's runtime cgroup, and
# return once CRI answers and the NRI socket exists. Tests call it to check what survives a
# containerd restart (`just rig-containerd-restart`).
# `--nri=off` restarts it with NRI disabled instead (containerd-config.sh --nri=off, written to
# containerd-nri-off.toml; the stale NRI socket is removed), returning once CRI answers;
# `--nri=on` (the default) puts the normal config back.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
nri=on
case "${1:---nri=on}" in
    --nri=on) config="$RIG_STATE/containerd.toml" ;;
    --nri=off) nri=off; config="$RIG_STATE/containerd-nri-off.toml" ;;
    *) rig_die "containerd-restart.sh: unknown option '$1' (want --nri=on or --nri=off)" ;;
esac
[ "$nri" = on ] || "$RIG_HACK_DIR/containerd-config.sh" --nri=off >"$config"

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
# No runtime listens on a socket left by the old containerd: a plugin must not find one.
[ "$nri" = on ] || rm -f "$RIG_NRI_SOCKET"
cg=$(cat "$RIG_RUN/runtime-cgroup")
# Not inheriting the caller's descriptors: the rig lock's would stay held by containerd.
(close_inherited_fds; exec setsid sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" \
    env PATH="$RIG_BIN:$PATH" "$RIG_BIN/containerd" --config "$config" \
    >>"$log" 2>&1 </dev/null) &
echo $! >"$pid_file"
deadline=$(( $(date +%s) + 60 ))
cri_up() { "${CTR[@]}" plugins ls 2>/dev/null | grep -Eq '^io\.containerd\.grpc\.v1 +cri +.* ok *$'; }
nri_up() { [ "$nri" = off ] || [ -S "$RIG_NRI_SOCKET" ]; }
until cri_up && nri_up; do
    kill -0 "$(cat "$pid_file")" 2>/dev/null || { tail -n 30 "$log" >&2; rig_die "containerd: exited at start"; }
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 30 "$log" >&2; rig_die "containerd: CRI not up after 60s"; }
    sleep 0.2
done
