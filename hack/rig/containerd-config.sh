#!/usr/bin/env bash
# Print the rig's containerd config (version 3): its own root/state and sockets under the rig
# state dir, CRI with CDI (spec dir under the state dir) and restrict_oom_score_adj, NRI with its
# socket under the state dir, runc from PATH with cgroupfs (no systemd here), the local pause
# image pinned, and CNI from the rig's own bin/conf dirs (rig-up writes a bridge config), with the
# pods' network namespaces mounted under containerd's state dir so rig-down's unmount finds them.
# `--nri=off` prints the same config with NRI disabled (the cgroup-fallback e2e restarts
# containerd with it, like a runtime without NRI).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
nri_disable=false
case "${1:---nri=on}" in
    --nri=on) ;;
    --nri=off) nri_disable=true ;;
    *) rig_die "containerd-config.sh: unknown option '$1' (want --nri=on or --nri=off)" ;;
esac
cat <<EOF2
version = 3
root = '$RIG_CONTAINERD_ROOT'
state = '$RIG_CONTAINERD_STATE'

[grpc]
  address = '$RIG_CRI_SOCKET'

[ttrpc]
  address = '$RIG_RUN/containerd.sock.ttrpc'

[debug]
  address = '$RIG_RUN/containerd-debug.sock'
  level = 'info'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = 'registry.k8s.io/pause:dracpu-rig'

  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    enable_cdi = true
    cdi_spec_dirs = ['$RIG_CDI_DIR']
    disable_apparmor = true
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '$(command -v runc)'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['$RIG_STATE/cni/bin']
      conf_dir = '$RIG_STATE/cni/net.d'

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'

  [plugins.'io.containerd.nri.v1.nri']
    disable = $nri_disable
    disable_connections = false
    socket_path = '$RIG_NRI_SOCKET'
    plugin_path = '$RIG_STATE/nri/plugins'
    plugin_config_path = '$RIG_STATE/nri/conf.d'
    plugin_registration_timeout = '5s'
    plugin_request_timeout = '2s'
EOF2
