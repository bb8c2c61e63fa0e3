#!/usr/bin/env bash
# Start an extra kube-apiserver beside the rig's, reusing its binaries, PKI and etcd under another
# etcd prefix, e.g. to test against a feature gate turned off:
#   hack/rig/extra-apiserver.sh 16444 /registry-nocc DRAConsumableCapacity=false
# Its PID goes to $RIG_RUN/extra-apiserver-PORT.pid (rig-down stops it too); stop it alone with
#   kill "$(cat /var/lib/dracpu-rig/run/extra-apiserver-PORT.pid)"
# Prints the URL once /readyz answers. The rig's admin kubeconfig works with --server changed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
rig_close_inherited_fds  # daemons started here must not hold the rig lock (see lib.sh)
REPO="$(cd "$RIG_HACK_DIR/../.." && pwd)"
PY="${DRACPU_PYTHON:-$REPO/.venv/bin/python}"
[ $# -ge 2 ] || rig_die "usage: $0 PORT ETCD_PREFIX [Gate=false,...]"
port=$1 prefix=$2 gates=${3:-}
name="extra-apiserver-$port"
cd "$REPO"
mapfile -t argv < <("$PY" -m tests.e2e.rig apiserver-argv "$port" "$prefix" "$gates")
[ ${#argv[@]} -gt 0 ] || rig_die "$name: could not build its command line"
setsid "${argv[@]}" >"$RIG_LOGS/$name.log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$RIG_RUN/$name.pid"
for _ in $(seq 300); do
    if curl -fsS --max-time 2 --cacert "$RIG_PKI/ca.crt" --cert "$RIG_PKI/admin.crt" \
        --key "$RIG_PKI/admin.key" "https://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
        echo "https://127.0.0.1:$port"
        exit 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.3
done
printf 'rig: ERROR: %s: not ready\n--- tail of %s ---\n' "$name" "$RIG_LOGS/$name.log" >&2
tail -n 30 "$RIG_LOGS/$name.log" >&2
kill "$pid" 2>/dev/null; rm -f "$RIG_RUN/$name.pid"
exit 1
