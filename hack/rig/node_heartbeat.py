"""Stand in for the kubelet's node status loop: create the rig's Node and keep it Ready.

There is no kubelet on the rig, so this process registers a Node for this host (capacity and
allocatable cpu, memory, pods; addresses; node info) and every few seconds renews its Ready
condition and its Lease in kube-node-lease, the two heartbeats the node lifecycle controller
watches. Started and stopped by hack/rig/up.sh and down.sh (its PID is recorded like every other
rig process). Failures are logged and retried with bounded exponential backoff plus jitter.

Usage: node_heartbeat.py --server URL --ca CA --cert CERT --key KEY --node NAME --version V
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import signal
import ssl
import sys
import time
from typing import Any

import httpx

INTERVAL_S = 5.0
MAX_BACKOFF_S = 30.0


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemTotal line")


def _node_object(name: str, version: str) -> dict[str, Any]:
    cpus = str(os.cpu_count() or 1)
    memory = f"{_memory_bytes() // 1024}Ki"
    resources = {"cpu": cpus, "memory": memory, "pods": "110", "ephemeral-storage": "10Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "dracpu.dev/rig": "true",
            },
        },
        "spec": {},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "dracpu rig",
                "containerRuntimeVersion": "containerd://rig",
                "kubeletVersion": version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


def _conditions(transition: str) -> list[dict[str, str]]:
    now = _now()
    ok = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("Ready", "True", "KubeletReady"),
    ]
    return [
        {
            "type": t,
            "status": s,
            "reason": r,
            "message": "dracpu rig heartbeat",
            "lastHeartbeatTime": now,
            "lastTransitionTime": transition,
        }
        for t, s, r in ok
    ]


class Heartbeat:
    """One Node and its Lease, renewed by :meth:`beat`."""

    def __init__(self, client: httpx.Client, node: str, version: str) -> None:
        self.client = client
        self.node = node
        self.version = version
        self.transition = _now()

    def ensure_node(self) -> None:
        r = self.client.get(f"/api/v1/nodes/{self.node}")
        if r.status_code == 404:
            r = self.client.post("/api/v1/nodes", json=_node_object(self.node, self.version))
            if r.status_code not in (201, 409):
                raise RuntimeError(f"create node {self.node}: HTTP {r.status_code} {r.text}")
        elif r.status_code != 200:
            raise RuntimeError(f"get node {self.node}: HTTP {r.status_code} {r.text}")

    def beat(self) -> None:
        self.ensure_node()
        status = _node_object(self.node, self.version)["status"]
        status["conditions"] = _conditions(self.transition)
        r = self.client.patch(
            f"/api/v1/nodes/{self.node}/status",
            json={"status": status},
            headers={"Content-Type": "application/strategic-merge-patch+json"},
        )
        if r.status_code != 200:
            raise RuntimeError(f"patch node {self.node} status: HTTP {r.status_code} {r.text}")
        self._renew_lease()

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        now_micro = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": 40, "renewTime": now_micro}
        r = self.client.patch(
            path,
            json={"spec": spec},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if r.status_code == 404:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.node, "namespace": "kube-node-lease"},
                "spec": spec,
            }
            r = self.client.post(path.rsplit("/", 1)[0], json=body)
        if r.status_code not in (200, 201, 404, 409):
            raise RuntimeError(f"renew lease {self.node}: HTTP {r.status_code} {r.text}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--server", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--version", required=True)
    args = p.parse_args(argv)

    stop = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    failures = 0
    with httpx.Client(base_url=args.server, verify=ctx, timeout=10.0) as client:
        hb = Heartbeat(client, args.node, args.version)
        while not stop:
            try:
                hb.beat()
                failures = 0
                delay = INTERVAL_S
            except (httpx.HTTPError, RuntimeError) as exc:
                failures += 1
                delay = min(MAX_BACKOFF_S, 0.5 * 2**failures) * random.uniform(0.5, 1.0)
                print(f"{_now()} heartbeat failed ({failures}): {exc}", file=sys.stderr)
            deadline = time.monotonic() + delay
            while not stop and time.monotonic() < deadline:
                time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
