"""Device health through the real kubelet: a CPU of a running claim goes offline and back.

``dracpu run`` (grouped by NUMA node, NRI enforcement) is the rig node's DRA driver, reading a
sysfs view (``--sysfs-root``) that describes this machine (CPUs 0-1, one NUMA node) and that the
test changes. The real kubelet (1.37: ``ResourceHealthStatus`` and ``ResourceHealthStatusMessage``
are beta and on by default) watches dracpu's health stream (``v1.DRAResourceHealth``, its first
choice) and reports the device in the pod's ``status.containerStatuses[].allocatedResourcesStatus``.
The kernel's own uevent (``change`` written to the CPU's ``uevent`` file) makes the daemon re-read
the view; the real CPU stays online, so the container keeps running on it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.dra_driver import DaemonFactory
from tests.e2e.enforcement import claim_cpus, claim_pod, start_daemon, template
from tests.e2e.kube import Created, container_process, get, wait_for, wait_running
from tests.e2e.rig import Rig
from tests.support.sysfs_tree import SysfsSpec, write_tree

pytestmark = pytest.mark.e2e

NS = "default"
CPUS = Path("/sys/devices/system/cpu")
# This machine as the rig sees it: one socket, one NUMA node, CPUs 0 and 1 (no SMT).
RIG_MACHINE = SysfsSpec(cores_per_numa=2, threads=1)
WATCHING_V1 = "kubelet is watching device health (v1)"


def _set_online(view: Path, cpu: int, online: bool) -> None:
    """Change the view: the global ``online`` list and the CPU's own ``online`` file."""
    base = view / "devices" / "system" / "cpu"
    (base / "online").write_text("0-1\n" if online else f"{1 - cpu}\n")
    (base / f"cpu{cpu}" / "online").write_text("1\n" if online else "0\n")


def _kernel_uevent(cpu: int) -> None:
    """The kernel broadcasts a real ``change`` uevent for the CPU on netlink."""
    (CPUS / f"cpu{cpu}" / "uevent").write_text("change\n")


def _claim_health(kube: httpx.Client, name: str) -> list[dict[str, Any]]:
    """The kubelet's ``allocatedResourcesStatus`` entries of the pod's claim ``cpus``."""
    pod = get(kube, f"/api/v1/namespaces/{NS}/pods/{name}")
    (status,) = pod["status"]["containerStatuses"]
    found: list[dict[str, Any]] = [
        r
        for entry in status.get("allocatedResourcesStatus") or []
        if entry["name"] == "claim:cpus"
        for r in entry["resources"]
    ]
    return found


def _wait_health(kube: httpx.Client, name: str, health: str, timeout: float) -> dict[str, Any]:
    (resource,) = wait_for(
        f"pod {name}: claim:cpus {health} in allocatedResourcesStatus",
        lambda: [r for r in _claim_health(kube, name) if r["health"] == health],
        timeout,
        interval=0.5,
    )
    return resource


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(CPUS / "cpu1" / "uevent", os.W_OK),
    reason="needs root to make the kernel emit a CPU uevent (write to cpuN/uevent)",
)
def test_offline_cpu_of_a_running_claim_shows_unhealthy_in_pod_status(
    rig: Rig,
    kube: httpx.Client,
    dracpu_daemon_factory: DaemonFactory,
    created: Created,
    dracpu_class: str,
    tmp_path: Path,
) -> None:
    view = write_tree(tmp_path / "view", RIG_MACHINE)
    daemon = start_daemon(dracpu_daemon_factory, kube, rig, sysfs_root=str(view))
    hotplug = wait_for(
        "uevent listener started",
        lambda: (h := daemon.status()["hotplug"])["state"] != "starting" and h,
    )
    assert hotplug["state"] == "listening", hotplug
    # The 1.37 kubelet chose the v1 health service from the announced ones.
    wait_for("kubelet watches health v1", lambda: WATCHING_V1 in daemon.log.read_text(), 20)
    tag = uuid.uuid4().hex[:6]
    template(created, f"e2e-{tag}")
    name = f"e2e-health-{tag}"
    created.pod(claim_pod(rig, name, f"e2e-{tag}"))
    pod = wait_running(kube, NS, name, timeout=90)
    uid, cpus = claim_cpus(kube, pod)
    cpu = int(cpus)
    healthy = _wait_health(kube, name, "Healthy", 30)
    assert "message" not in healthy, healthy
    claim_path = (
        f"/apis/resource.k8s.io/v1/namespaces/{NS}/resourceclaims/"
        f"{pod['status']['resourceClaimStatuses'][0]['resourceClaimName']}"
    )
    allocation = get(kube, claim_path)["status"]["allocation"]

    try:
        _set_online(view, cpu, online=False)
        _kernel_uevent(cpu)
        bad = _wait_health(kube, name, "Unhealthy", 30)
        assert bad["resourceID"] == healthy["resourceID"], (bad, healthy)
        # dracpu's message, carried by the kubelet (ResourceHealthStatusMessage).
        want = f"holds CPUs {cpu} that are offline or removed"
        assert want in bad.get("message", ""), bad
        assert f"claim {NS}/" in bad["message"], bad
        # The claim is not moved: same allocation, same CPUs held, container still pinned.
        assert get(kube, claim_path)["status"]["allocation"] == allocation
        assert [(c["uid"], c["cpus"]) for c in daemon.status()["claims"]] == [(uid, cpus)]
        assert container_process(rig, pod, "c0").cpus_allowed_list == cpus
    finally:
        _set_online(view, cpu, online=True)
        _kernel_uevent(cpu)
    back = _wait_health(kube, name, "Healthy", 30)
    assert "message" not in back, back
    assert daemon.status()["hotplug"]["topologyChanges"] == 2
    current = get(kube, f"/api/v1/namespaces/{NS}/pods/{name}")
    assert current["status"]["containerStatuses"][0]["restartCount"] == 0
