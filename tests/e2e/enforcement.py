"""Helpers of the enforcement e2e tests: the daemon as the node's driver, claim and shared pods,
what a shared container sees, the daemon's HTTP endpoint, and containerd with NRI off."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.e2e.dra_driver import DracpuDaemon
from tests.e2e.kube import (
    RESOURCE,
    Created,
    busybox_container,
    get,
    node_slices,
    pod_body,
    pod_log,
    wait_for,
)
from tests.e2e.rig import Rig

NS = "default"
ONE_CPU = {"cpu": "1", "memory": "64Mi"}
DaemonFactory = Callable[..., DracpuDaemon]
# Prints its own affinity every 0.3 s (the grep child inherits the shell's, which NRI moves).
WATCH_SELF = "while true; do grep Cpus_allowed_list /proc/self/status; sleep 0.3; done"
SYNCED = "NRI: plugin 90-dra.cpu registered and synchronized"


def new_tag() -> str:
    return uuid.uuid4().hex[:6]


def start_daemon(factory: DaemonFactory, kube: httpx.Client, rig: Rig, **opts: Any) -> DracpuDaemon:
    """``dracpu run`` grouped by NUMA node (one device of 2 CPUs here), once it has published."""
    drv = factory(cpu_device_mode="grouped", group_by="numanode", **opts)
    wait_for("published slice", lambda: node_slices(kube, rig), 20)
    return drv


def template(created: Created, name: str, cpus: int = 1) -> None:
    """A ResourceClaimTemplate asking ``dra.cpu`` for ``cpus`` CPUs (request ``cpus``)."""
    request = {
        "name": "cpus",
        "exactly": {
            "deviceClassName": "dra.cpu",
            "capacity": {"requests": {"dra.cpu/cpu": str(cpus)}},
        },
    }
    created.post(
        f"{RESOURCE}/namespaces/{NS}/resourceclaimtemplates",
        {"metadata": {"name": name}, "spec": {"spec": {"devices": {"requests": [request]}}}},
    )


CLAIMED = {"requests": ONE_CPU, "limits": ONE_CPU, "claims": [{"name": "cpus"}]}
"""Option B resources: 1 CPU, and the pod's claim ``cpus``."""


def claim_pod(
    rig: Rig, name: str, template_name: str, containers: int = 1, **spec: Any
) -> dict[str, Any]:
    """Option B: each container asks for 1 CPU and uses claim ``cpus``."""
    return pod_body(
        name,
        [
            busybox_container(rig, f"c{i}", "sleep 3600", resources=CLAIMED)
            for i in range(containers)
        ],
        resourceClaims=[{"name": "cpus", "resourceClaimTemplateName": template_name}],
        **spec,
    )


def shared_pod(rig: Rig, name: str, **extra: Any) -> dict[str, Any]:
    return pod_body(name, [busybox_container(rig, "main", WATCH_SELF, **extra)])


def seen_inside(kube: httpx.Client, name: str, container: str = "main") -> str:
    """The last ``Cpus_allowed_list`` a WATCH_SELF container printed about itself."""
    lines = [ln for ln in pod_log(kube, NS, name, container).splitlines() if ln.strip()]
    return lines[-1].split(":", 1)[1].strip() if lines else ""


def claim_cpus(kube: httpx.Client, pod: dict[str, Any]) -> tuple[str, str]:
    """The UID and the CPUs (the status data dracpu writes) of the pod's one claim."""
    (st,) = pod["status"]["resourceClaimStatuses"]
    path = f"{RESOURCE}/namespaces/{NS}/resourceclaims/{st['resourceClaimName']}"
    uid: str = get(kube, path)["metadata"]["uid"]

    def data() -> str:
        for dev in get(kube, path).get("status", {}).get("devices", []):
            if dev.get("data"):
                return str(dev["data"]["claimCpuset"])
        return ""

    return uid, wait_for("claim status.devices data", data, 20)


def other(cpus: str) -> str:
    """On the rig's 2 CPUs: the shared pool left beside a 1-CPU claim."""
    return {"0": "1", "1": "0"}[cpus]


def endpoint(drv: DracpuDaemon, path: str) -> httpx.Response:
    """GET ``path`` from the daemon's HTTP endpoint (``/metrics``, ``/healthz``, ...)."""
    bound: list[str] = wait_for("HTTP endpoint bound", lambda: drv.status()["endpoint"], 10)
    port = bound[0].rsplit(":", 1)[1]  # the daemon runs with --bind-address=127.0.0.1:0
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)


def metric(drv: DracpuDaemon, name: str) -> float:
    """One unlabelled sample of the daemon's ``/metrics``."""
    for line in endpoint(drv, "/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no sample {name} in /metrics")


class Containerd:
    """The rig's containerd, restarted with NRI off or on (``hack/rig/containerd-restart.sh``).

    ``nri`` is what it runs with now; :meth:`restore` puts NRI back if it is off."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.nri = True

    def restart(self, *, nri: bool) -> None:
        self.nri = nri  # set first: after a failed restart, restore tries again
        flag = "--nri=on" if nri else "--nri=off"
        subprocess.run([str(self.rig.containerd_restart_script), flag], check=True, timeout=90)

    def restore(self) -> None:
        if not self.nri:
            self.restart(nri=True)
