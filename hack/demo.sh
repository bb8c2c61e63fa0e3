#!/usr/bin/env bash
# `just demo`: the one-command demo on a fresh machine (README's first command).
#   1. build what is needed (rig binaries with the kubelet, helm, the image), showing progress;
#   2. start the rig (etcd, apiserver, scheduler, controller-manager, containerd, real kubelet);
#   3. deploy dracpu as a DaemonSet from the locally built image (`just deploy`);
#   4. run a sample pod claiming one CPU of a grouped (NUMA node) device, then helm-upgrade
#      dracpu to individual mode and run a pod claiming one individual CPU device; print each
#      pod's CPUs, its DRA_CPUSET env and the node's slices.
# `just demo-down` removes the sample pods, undeploys dracpu and stops the rig.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== demo: %s (%s)\n' "$*" "$(date +%T)"; }
kubectl_py=.venv/bin/python
step "building the rig's binaries (cold: ~10-15 min; cached in ~/.cache/dracpu)"
just rig-build
step "building helm"
just tools
step "starting the rig"
just rig-up
step "deploying dracpu in grouped mode (builds the image on first use: ~3 min)"
just deploy --set args.cpuDeviceMode=grouped
step "a pod claiming 1 CPU of a NUMA-node device"
"$kubectl_py" -m hack.demo_pods run grouped
step "removing the grouped pod, then helm upgrade to individual mode (rolls the DaemonSet)"
# A claim prepared through a grouped device is not known to the scheduler as holding an
# individual device, so switching modes with it still running gets a per-claim "stale
# allocation" error from dracpu for the CPU it holds (docs/install.md).
"$kubectl_py" -m hack.demo_pods delete
just deploy --set args.cpuDeviceMode=individual
step "a pod claiming one individual CPU device"
"$kubectl_py" -m hack.demo_pods run individual
step "done: 'just demo-down' tears it all down"
