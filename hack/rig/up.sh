#!/usr/bin/env bash
# Start the rig: etcd, kube-apiserver, kube-scheduler, kube-controller-manager, containerd with
# CRI + NRI + CDI + CNI (bridge), and a real kubelet as the rig's node, all on loopback, the node's
# IP and unix sockets under one state directory. Idempotent: a no-op when the rig is already up and healthy; a half-up rig is
# torn down first. On any failure it names the component, prints its log tail and tears down.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
rig_close_inherited_fds  # daemons started here must not hold the rig lock (see lib.sh)
REPO="$(cd "$RIG_HACK_DIR/../.." && pwd)"
PY="${DRACPU_PYTHON:-$REPO/.venv/bin/python}"
cd "$REPO"
t_start=$(date +%s.%N)

if "$PY" -m tests.e2e.rig is-up; then
    rig_log "already up"
    exec "$RIG_HACK_DIR/status.sh"
fi
if compgen -G "$RIG_RUN/*.pid" >/dev/null; then
    rig_log "found a half-up rig; tearing it down first"
    "$RIG_HACK_DIR/down.sh"
fi

failed=1
cleanup_on_failure() {
    if [ "$failed" = 1 ]; then
        rig_log "rig-up failed; tearing down what was started (logs kept in $RIG_LOGS)"
        "$RIG_HACK_DIR/down.sh" >&2 || true
    fi
}
trap cleanup_on_failure EXIT

# ---------------------------------------------------------------- preflight
for b in etcd kube-apiserver kube-scheduler kube-controller-manager kubelet containerd \
    containerd-shim-runc-v2 ctr; do
    [ -x "$RIG_BIN/$b" ] || rig_die "$b: missing binary $RIG_BIN/$b (run \`just rig-build\`)"
done
for t in runc openssl curl; do
    command -v "$t" >/dev/null || rig_die "$t: not on PATH (run \`just rig-build\`)"
done
[ -x /bin/busybox ] || rig_die "busybox: /bin/busybox missing (run \`just rig-build\`)"
for p in bridge host-local loopback; do
    [ -x "$RIG_CNI_PLUGIN_DIR/$p" ] || rig_die "cni: $RIG_CNI_PLUGIN_DIR/$p missing (run \`just rig-build\`)"
done
# The node's InternalIP: the apiserver reaches the kubelet there (pod logs); it must not be
# loopback (the kubelet refuses that). The default route's source address, else the first global
# IPv4 address.
node_ip="${DRACPU_RIG_NODE_IP:-}"
[ -n "$node_ip" ] || node_ip=$(ip -4 route get 192.0.2.254 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") { print $(i + 1); exit }}')
[ -n "$node_ip" ] || node_ip=$(ip -o -4 addr show scope global 2>/dev/null | awk '{ sub("/.*", "", $4); print $4; exit }')
[ -n "$node_ip" ] || rig_die "kubelet: no non-loopback IPv4 address for the node (set DRACPU_RIG_NODE_IP)"
[ -x "$PY" ] || rig_die "python: $PY missing (run \`just setup\`)"
[ "$(id -u)" = 0 ] || rig_die "rig-up must run as root (containerd, cgroups, mounts)"
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for pc in "$RIG_ETCD_CLIENT_PORT:etcd" "$RIG_ETCD_PEER_PORT:etcd" \
    "$RIG_APISERVER_PORT:kube-apiserver" "$RIG_SCHEDULER_PORT:kube-scheduler" \
    "$RIG_KCM_PORT:kube-controller-manager" "$RIG_KUBELET_HEALTHZ_PORT:kubelet"; do
    if port_in_use "${pc%%:*}"; then
        rig_die "${pc#*:}: port 127.0.0.1:${pc%%:*} is already in use by another process"
    fi
done
if (exec 3<>"/dev/tcp/$node_ip/$RIG_KUBELET_PORT") 2>/dev/null; then
    rig_die "kubelet: port $node_ip:$RIG_KUBELET_PORT is already in use by another process"
fi

# Fresh data each time (PKI is kept); unmount anything a previous containerd left behind.
"$RIG_HACK_DIR/down.sh" --unmount-only
rm -rf --one-file-system "$RIG_STATE/etcd" "$RIG_STATE/containerd" "$RIG_RUN" "$RIG_CDI_DIR" \
    "$RIG_STATE/nri" "$RIG_KUBELET_ROOT" "$RIG_POD_LOGS" "$RIG_CNI_DIR"
mkdir -p "$RIG_RUN" "$RIG_LOGS" "$RIG_PKI" "$RIG_CDI_DIR" "$RIG_STATE/nri/plugins" \
    "$RIG_STATE/nri/conf.d" "$RIG_KUBELET_ROOT" "$RIG_POD_LOGS" "$RIG_CNI_DIR/bin" \
    "$RIG_CNI_DIR/net.d" "$RIG_HOST_DIR"
echo "$node_ip" >"$RIG_STATE/node-ip"

# ---------------------------------------------------------------- helpers
elapsed() { awk -v a="$(date +%s.%N)" -v b="$t_start" 'BEGIN { printf "%.1f", a - b }'; }
# start NAME CMD...: run CMD detached in its own session, log to logs/NAME.log, record its PID.
start() {
    local name=$1; shift
    : >"$RIG_LOGS/$name.log"
    setsid "$@" >>"$RIG_LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$RIG_RUN/$name.pid"
}
fail() {
    local name=$1 why=$2
    printf 'rig: ERROR: %s: %s\n--- tail of %s ---\n' "$name" "$why" "$RIG_LOGS/$name.log" >&2
    tail -n 30 "$RIG_LOGS/$name.log" >&2 || true
    exit 1
}
# wait_ready NAME TIMEOUT_S CHECK...: poll CHECK until it succeeds, the process dies or time runs out.
wait_ready() {
    local name=$1 timeout=$2; shift 2
    local pid; pid=$(cat "$RIG_RUN/$name.pid")
    local deadline=$(( $(date +%s) + timeout ))
    until "$@" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || fail "$name" "exited before becoming ready"
        [ "$(date +%s)" -lt "$deadline" ] || fail "$name" "not ready after ${timeout}s"
        sleep 0.3
    done
    rig_log "${what:-$name} ready ($(elapsed)s)"
}
CURL=(curl -fsS --max-time 3 --cacert "$RIG_PKI/ca.crt" --cert "$RIG_PKI/admin.crt"
    --key "$RIG_PKI/admin.key")

# ---------------------------------------------------------------- PKI (kept across runs)
sign() { # sign NAME SUBJECT EXTENSIONS
    local n=$1 subj=$2 ext=$3
    openssl genrsa -out "$RIG_PKI/$n.key" 2048 2>/dev/null
    openssl req -new -key "$RIG_PKI/$n.key" -subj "$subj" -out "$RIG_PKI/$n.csr"
    printf '%s\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n' "$ext" \
        >"$RIG_PKI/$n.ext"
    openssl x509 -req -in "$RIG_PKI/$n.csr" -CA "$RIG_PKI/ca.crt" -CAkey "$RIG_PKI/ca.key" \
        -CAcreateserial -days 3650 -sha256 -extfile "$RIG_PKI/$n.ext" -out "$RIG_PKI/$n.crt" \
        2>/dev/null
    rm -f "$RIG_PKI/$n.csr" "$RIG_PKI/$n.ext"
}
if [ ! -s "$RIG_PKI/sa.pub" ]; then
    rig_log "generating PKI in $RIG_PKI"
    umask 077
    openssl genrsa -out "$RIG_PKI/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$RIG_PKI/ca.key" -subj "/CN=dracpu-rig-ca" -days 3650 -sha256 \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out "$RIG_PKI/ca.crt"
    sign apiserver "/CN=kube-apiserver" \
        "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1"
    sign admin "/O=system:masters/CN=dracpu-rig-admin" \
        "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    openssl genrsa -out "$RIG_PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$RIG_PKI/sa.key" -pubout -out "$RIG_PKI/sa.pub" 2>/dev/null
    umask 022
fi
# Certificates added with the kubelet, made when missing (also in a PKI dir from an older rig):
# the node's client cert (Node authorizer + NodeRestriction see system:node:<name>), the
# apiserver's client cert towards the kubelet (pod logs), and the kubelet's serving cert for the
# node's IP, remade when that IP changes.
umask 077
[ -s "$RIG_PKI/node-$RIG_NODE_NAME.crt" ] || sign "node-$RIG_NODE_NAME" \
    "/O=system:nodes/CN=system:node:$RIG_NODE_NAME" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
[ -s "$RIG_PKI/apiserver-kubelet-client.crt" ] || sign apiserver-kubelet-client \
    "/O=system:masters/CN=kube-apiserver-kubelet-client" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
if [ "$(cat "$RIG_PKI/kubelet-serving.ip" 2>/dev/null)" != "$node_ip" ]; then
    sign kubelet-serving "/CN=$RIG_NODE_NAME" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$node_ip,IP:127.0.0.1,DNS:$RIG_NODE_NAME"
    echo "$node_ip" >"$RIG_PKI/kubelet-serving.ip"
fi
umask 022
b64() { base64 -w0 <"$1"; }
cat >"$RIG_STATE/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dracpu-rig
  cluster:
    server: https://127.0.0.1:$RIG_APISERVER_PORT
    certificate-authority-data: $(b64 "$RIG_PKI/ca.crt")
users:
- name: system:node:$RIG_NODE_NAME
  user:
    client-certificate-data: $(b64 "$RIG_PKI/node-$RIG_NODE_NAME.crt")
    client-key-data: $(b64 "$RIG_PKI/node-$RIG_NODE_NAME.key")
contexts:
- name: dracpu-rig
  context: {cluster: dracpu-rig, user: "system:node:$RIG_NODE_NAME"}
current-context: dracpu-rig
EOF
chmod 600 "$RIG_STATE/kubelet.kubeconfig"
cat >"$RIG_KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dracpu-rig
  cluster:
    server: https://127.0.0.1:$RIG_APISERVER_PORT
    certificate-authority-data: $(b64 "$RIG_PKI/ca.crt")
users:
- name: dracpu-rig-admin
  user:
    client-certificate-data: $(b64 "$RIG_PKI/admin.crt")
    client-key-data: $(b64 "$RIG_PKI/admin.key")
contexts:
- name: dracpu-rig
  context: {cluster: dracpu-rig, user: dracpu-rig-admin}
current-context: dracpu-rig
EOF
chmod 600 "$RIG_KUBECONFIG"

# ---------------------------------------------------------------- feature gates
# The gates dracpu uses, kept only when this kube-apiserver release knows them; the kubelet gets
# the subset it knows (it rejects gates it does not have, e.g. DRADeviceTaints).
known_gates() { # known_gates BINARY GATE...: print NAME=true,... for the gates BINARY lists
    local help_text out=""; help_text=$("$1" --help 2>&1 || true); shift
    for g in "$@"; do
        if grep -Eq "(^| |kube:)$g=true\|false" <<<"$help_text"; then out+="${out:+,}$g=true"; fi
    done
    echo "$out"
}
dra_gates=(DRAConsumableCapacity DRAPartitionableDevices DRAResourceClaimDeviceStatus
    DRAListTypeAttributes DRANodeAllocatableResources DRADeviceTaints)
gates=$(known_gates "$RIG_BIN/kube-apiserver" "${dra_gates[@]}")
kubelet_gates=$(known_gates "$RIG_BIN/kubelet" "${dra_gates[@]}")
echo "$gates" >"$RIG_STATE/feature-gates"
rig_log "feature gates: ${gates:-none}; kubelet: ${kubelet_gates:-none}"

# ---------------------------------------------------------------- etcd
start etcd "$RIG_BIN/etcd" --name rig --data-dir "$RIG_STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$RIG_ETCD_CLIENT_PORT" \
    --advertise-client-urls "http://127.0.0.1:$RIG_ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$RIG_ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$RIG_ETCD_PEER_PORT" \
    --initial-cluster "rig=http://127.0.0.1:$RIG_ETCD_PEER_PORT" \
    --log-level warn --quota-backend-bytes 1073741824 --unsafe-no-fsync

# ---------------------------------------------------------------- containerd (needs no apiserver)
# The CNI config must exist before containerd starts: its config watcher can miss a file that
# appears later and then reports the network as not ready, which keeps the node NotReady.
for p in bridge host-local loopback; do ln -sf "$RIG_CNI_PLUGIN_DIR/$p" "$RIG_CNI_DIR/bin/$p"; done
cat >"$RIG_CNI_DIR/net.d/10-dracpu-rig.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "dracpu-rig",
 "plugins": [{"type": "bridge", "bridge": "$RIG_CNI_BRIDGE", "isGateway": false, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$RIG_POD_CIDR"}]],
            "dataDir": "$RIG_CNI_DIR/ipam"}}]}
EOF
# Host paths the kubelet or containerd's CNI code may create; rig-down removes those it made.
for p in $RIG_HOST_PATHS; do
    if [ ! -e "$p" ] && ! grep -qx "$p" "$RIG_HOST_DIR/created-paths" 2>/dev/null; then
        echo "$p" >>"$RIG_HOST_DIR/created-paths"
    fi
done
"$RIG_HACK_DIR/containerd-config.sh" >"$RIG_STATE/containerd.toml"
# containerd and its shims live in a pids cgroup of the rig's own, so rig-down can find every
# shim even after containerd has exited (shims re-parent to init).
for h in /sys/fs/cgroup/pids /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if [ -f "$h/cgroup.procs" ]; then cg="$h/$RIG_CGROUP_PARENT-runtime"; break; fi
done
mkdir -p "$cg"
echo "$cg" >"$RIG_RUN/runtime-cgroup"
start containerd sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" \
    env PATH="$RIG_BIN:$PATH" "$RIG_BIN/containerd" --config "$RIG_STATE/containerd.toml"

wait_ready etcd 30 curl -fsS --max-time 2 "http://127.0.0.1:$RIG_ETCD_CLIENT_PORT/health"

# ---------------------------------------------------------------- kube-apiserver
mapfile -t apiserver_argv < <("$PY" -m tests.e2e.rig main-apiserver-argv "$gates")
start kube-apiserver "${apiserver_argv[@]}"

CTR=("$RIG_BIN/ctr" --address "$RIG_CRI_SOCKET" -n k8s.io)
wait_ready containerd 60 "${CTR[@]}" version
# CRI answers only once its plugin has loaded; the status call goes through the CRI service.
cri_up() { "${CTR[@]}" plugins ls | grep -Eq '^io\.containerd\.grpc\.v1 +cri +.* ok *$'; }
what="containerd CRI plugin" wait_ready containerd 60 cri_up
[ -S "$RIG_NRI_SOCKET" ] || fail containerd "NRI socket $RIG_NRI_SOCKET not created"
"$PY" "$RIG_HACK_DIR/build_images.py" "$RIG_STATE/images" >>"$RIG_LOGS/images.log" 2>&1 ||
    { tail -n 30 "$RIG_LOGS/images.log" >&2; rig_die "images: building busybox/pause images failed"; }
for img in "$RIG_STATE/images"/*.tar; do
    "${CTR[@]}" images import --platform linux/amd64 "$img" >>"$RIG_LOGS/images.log" 2>&1 ||
        { tail -n 30 "$RIG_LOGS/images.log" >&2; rig_die "images: ctr import $img failed"; }
done
"${CTR[@]}" images ls -q >>"$RIG_LOGS/images.log" 2>&1

wait_ready kube-apiserver 90 "${CURL[@]}" "https://127.0.0.1:$RIG_APISERVER_PORT/readyz"

# ---------------------------------------------------------------- scheduler, controller-manager
start kube-scheduler "$RIG_BIN/kube-scheduler" --kubeconfig "$RIG_KUBECONFIG" \
    --authentication-kubeconfig "$RIG_KUBECONFIG" --authorization-kubeconfig "$RIG_KUBECONFIG" \
    --bind-address 127.0.0.1 --secure-port "$RIG_SCHEDULER_PORT" --leader-elect=false \
    ${gates:+--feature-gates "$gates"}
# --node-monitor-period 1s: the node lifecycle controller removes the not-ready taint of a
# fresh Node within a second of Ready, not five.
start kube-controller-manager "$RIG_BIN/kube-controller-manager" --kubeconfig "$RIG_KUBECONFIG" \
    --authentication-kubeconfig "$RIG_KUBECONFIG" --authorization-kubeconfig "$RIG_KUBECONFIG" \
    --bind-address 127.0.0.1 --secure-port "$RIG_KCM_PORT" --leader-elect=false \
    --controllers '*' --use-service-account-credentials=false --node-monitor-period 1s \
    --service-account-private-key-file "$RIG_PKI/sa.key" --root-ca-file "$RIG_PKI/ca.crt" \
    --cluster-signing-cert-file "$RIG_PKI/ca.crt" --cluster-signing-key-file "$RIG_PKI/ca.key" \
    ${gates:+--feature-gates "$gates"}

# ---------------------------------------------------------------- the kubelet (the rig's node)
# Kernel settings the kubelet will change: recorded once (a rerun after a crash must not record
# the kubelet's values), restored by rig-down.
if [ ! -s "$RIG_HOST_DIR/sysctl.orig" ]; then
    for k in $RIG_KUBELET_SYSCTLS; do echo "$k=$(cat "/proc/sys/${k//.//}")"; done >"$RIG_HOST_DIR/sysctl.orig.tmp"
    mv "$RIG_HOST_DIR/sysctl.orig.tmp" "$RIG_HOST_DIR/sysctl.orig"
fi
# cgroupRoot /dracpu-rig in every hierarchy (the kubelet requires it to exist); cpuset needs
# cpus and mems before anything can join it. Pods land in /dracpu-rig/kubepods/<qos>/pod<uid>.
for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ -f "$h/cgroup.procs" ] || continue
    mkdir -p "$h$RIG_CGROUP_PARENT"
    for f in cpuset.cpus cpuset.mems; do
        [ -f "$h$f" ] && [ -f "$h$RIG_CGROUP_PARENT/$f" ] && cat "$h$f" >"$h$RIG_CGROUP_PARENT/$f"
    done
done
{
    echo "apiVersion: kubelet.config.k8s.io/v1beta1"
    echo "kind: KubeletConfiguration"
    echo "containerRuntimeEndpoint: unix://$RIG_CRI_SOCKET"
    echo "cgroupDriver: cgroupfs"
    echo "cgroupRoot: /$RIG_CGROUP_PARENT"
    echo "failCgroupV1: false"
    echo "failSwapOn: false"
    echo "cpuManagerPolicy: none"
    echo "address: $node_ip"
    echo "port: $RIG_KUBELET_PORT"
    echo "readOnlyPort: 0"
    echo "healthzBindAddress: 127.0.0.1"
    echo "healthzPort: $RIG_KUBELET_HEALTHZ_PORT"
    echo "tlsCertFile: $RIG_PKI/kubelet-serving.crt"
    echo "tlsPrivateKeyFile: $RIG_PKI/kubelet-serving.key"
    echo "rotateCertificates: false"
    echo "serverTLSBootstrap: false"
    echo "authentication:"
    echo "  anonymous: {enabled: false}"
    echo "  webhook: {enabled: true}"
    echo "  x509: {clientCAFile: $RIG_PKI/ca.crt}"
    echo "authorization: {mode: Webhook}"
    # Evict only when the machine is nearly out of memory or disk: a busy shared disk must
    # not taint the node (DiskPressure) in the middle of a test run.
    echo "evictionHard: {memory.available: 1Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%, imagefs.inodesFree: 1%}"
    # Images are local (imported at rig-up, no registry reachable): never garbage-collect them.
    echo "imageGCHighThresholdPercent: 100"
    echo "imageGCLowThresholdPercent: 99"
    echo "protectKernelDefaults: false"
    echo "syncFrequency: 10s"
    echo "nodeStatusUpdateFrequency: 5s"
    echo "registerNode: true"
    echo "podLogsDir: $RIG_POD_LOGS"
    echo "resolvConf: /etc/resolv.conf"
    if [ -n "$kubelet_gates" ]; then
        echo "featureGates:"
        tr ',' '\n' <<<"$kubelet_gates" | sed 's/=/: /; s/^/  /'
    fi
} >"$RIG_STATE/kubelet-config.yaml"

wait_ready kube-scheduler 60 curl -fsSk --max-time 2 "https://127.0.0.1:$RIG_SCHEDULER_PORT/healthz"
wait_ready kube-controller-manager 60 curl -fsSk --max-time 2 "https://127.0.0.1:$RIG_KCM_PORT/healthz"
: >"$RIG_LOGS/kubelet.log"  # kubelet.sh appends, so restarts by tests stay in one log
"$RIG_HACK_DIR/kubelet.sh" start || fail kubelet "did not start"
node_ready() { # Ready=True and the not-ready taint removed by the node lifecycle controller
    "${CURL[@]}" "https://127.0.0.1:$RIG_APISERVER_PORT/api/v1/nodes/$RIG_NODE_NAME" |
        "$PY" -c 'import json,sys; n=json.load(sys.stdin)
ready=[c for c in n["status"].get("conditions",[]) if c["type"]=="Ready" and c["status"]=="True"]
taints=[t for t in n["spec"].get("taints",[]) if t["key"].startswith("node.kubernetes.io/")]
sys.exit(0 if ready and not taints else 1)'
}
what="node $RIG_NODE_NAME (Ready, untainted)" wait_ready kubelet 60 node_ready
# ServiceAccount admission needs "default" to exist before pods can be created there.
what="default ServiceAccount" wait_ready kube-controller-manager 60 "${CURL[@]}" \
    "https://127.0.0.1:$RIG_APISERVER_PORT/api/v1/namespaces/default/serviceaccounts/default"

"$PY" -m tests.e2e.rig is-up || rig_die "rig: components started but rig_is_up() is false"
failed=0
rig_log "up in $(elapsed)s"
exec "$RIG_HACK_DIR/status.sh"
