#!/usr/bin/env bash
# Build the rig's pinned binaries from the Go module proxy into the cache (each reused when
# present, so a cache from before the kubelet joined the rig only builds the kubelet), and install
# runc, busybox-static and the CNI plugins (bridge, host-local, loopback) from Debian.
# Idempotent; nice'd because builds are long.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

export GOFLAGS="-trimpath -mod=mod"
export GOTOOLCHAIN=local
mkdir -p "$RIG_BIN"
start=$(date +%s)

need_apt=()
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx sh || need_apt+=(busybox-static)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
for p in bridge host-local loopback; do
    [ -x "$RIG_CNI_PLUGIN_DIR/$p" ] || { need_apt+=(containernetworking-plugins); break; }
done
if [ ${#need_apt[@]} -gt 0 ]; then
    rig_log "apt-get install ${need_apt[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# build <module dir> <binary> <package> [extra go build args...]
build() {
    local dir=$1 bin=$2 pkg=$3; shift 3
    if [ -x "$RIG_BIN/$bin" ]; then return 0; fi
    rig_log "building $bin ($pkg)"
    local t0; t0=$(date +%s)
    (cd "$RIG_HACK_DIR/$dir" && nice -n 10 go build -o "$RIG_BIN/$bin.tmp" "$@" "$pkg")
    mv "$RIG_BIN/$bin.tmp" "$RIG_BIN/$bin"
    rig_log "built $bin in $(( $(date +%s) - t0 ))s"
}

kv="$KUBERNETES_VERSION"; kmaj=${kv#v}; kmaj=${kmaj%%.*}; kmin=${kv#v*.}; kmin=${kmin%%.*}
kflags="-s -w -X k8s.io/component-base/version.gitVersion=$kv -X k8s.io/component-base/version.gitMajor=$kmaj -X k8s.io/component-base/version.gitMinor=$kmin -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$kv"
export CGO_ENABLED=0
build etcd etcd go.etcd.io/etcd/server/v3 -ldflags "-s -w"
for c in kube-apiserver kube-scheduler kube-controller-manager kubelet; do
    build k8s "$c" "k8s.io/kubernetes/cmd/$c" -ldflags "$kflags"
done
cflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
ctags="no_btrfs no_devmapper no_zfs no_aufs"
for c in containerd containerd-shim-runc-v2 ctr; do
    build containerd "$c" "github.com/containerd/containerd/v2/cmd/$c" -tags "$ctags" -ldflags "$cflags"
done
rig_log "binaries ready in $RIG_BIN ($(( $(date +%s) - start ))s)"
