#!/usr/bin/env bash
# `just demo`: the one-command demo on a fresh machine (README's first command).
#   1. build what is needed (rig binaries with the kubelet, helm, the image), showing progress;
#   2. start the rig (etcd, apiserver, scheduler, controller-manager, containerd, real kubelet);
#   3. deploy dracpu as a DaemonSet from the locally built image (`just deploy`);
#   4. run two sample pods, one claiming through the grouped device (a NUMA node) and one
#      through an individual CPU device, and print each pod's CPUs and the node's slices.
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
step "deploying dracpu (builds the image on first use: ~3 min)"
just deploy
step "running sample pods"
"$kubectl_py" -m hack.demo_pods run
step "done: 'just demo-down' tears it all down"
