"""The cgroup fallback on the rig: containerd restarted with NRI disabled, pods run by the real
kubelet, ``dracpu run --enforcement=auto`` as the node's DRA driver.

With no NRI socket the daemon enforces by writing ``cpuset.cpus`` under the kubelet's pod tree
(cgroup v1 cpuset on this machine, cgroupfs layout). Checked through the real kubelet and
containerd: the claim's container pinned to exactly its claim's CPUs (``/proc/<pid>/status``),
a shared container kept off them and widened again once the claim pod is deleted, the fallback
reported active (status, ``/healthz``, ``dracpu_cgroup_fallback_active`` = 1), and a rewrite of
``cpuset.cpus`` (what ``runc update`` does for the kubelet) undone. Then containerd is restarted
with NRI on: dracpu hands over to NRI and nothing moves. Two containerd restarts in all; the
fixture puts NRI back even when the test fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.enforcement import (
    NS,
    SYNCED,
    Containerd,
    DaemonFactory,
    claim_cpus,
    claim_pod,
    endpoint,
    metric,
    new_tag,
    other,
    seen_inside,
    shared_pod,
    start_daemon,
    template,
)
from tests.e2e.kube import Created, container_cgroup, container_process, get, wait_for, wait_running
from tests.e2e.rig import Rig

pytestmark = pytest.mark.e2e

FALLBACK_ACTIVE = "dracpu_cgroup_fallback_active"


@pytest.fixture
def containerd_without_nri(rig: Rig) -> Iterator[Containerd]:
    """containerd restarted with NRI disabled; NRI is put back at the end unless the test did.

    Requested before the daemon and the pods, so it is torn down after them."""
    containerd = Containerd(rig)
    containerd.restart(nri=False)
    try:
        yield containerd
    finally:
        containerd.restore()


def test_fallback_pins_through_cgroups_without_nri_then_hands_over_to_nri(
    containerd_without_nri: Containerd,
    rig: Rig,
    kube: httpx.Client,
    dracpu_daemon_factory: DaemonFactory,
    created: Created,
    dracpu_class: str,
) -> None:
    assert not rig.nri_socket.exists()
    drv = start_daemon(dracpu_daemon_factory, kube, rig, enforcement="auto")
    # NRI absent for the 2 s grace: the fallback takes over, and says so everywhere.
    wait_for("fallback active", lambda: drv.status()["enforcement"] == "cgroups", 20)
    assert metric(drv, FALLBACK_ACTIVE) == 1
    assert endpoint(drv, "/healthz").status_code == 200
    assert "NRI unavailable: enforcing through cgroup v1" in drv.log.read_text()

    tag = new_tag()
    shared = f"e2e-shared-{tag}"
    created.pod(shared_pod(rig, shared))
    sp = wait_running(kube, NS, shared)
    wait_for("shared container sees 0-1", lambda: seen_inside(kube, shared) == "0-1", 20)

    template(created, f"e2e-{tag}")
    first = f"e2e-excl-{tag}"
    created.pod(claim_pod(rig, first, f"e2e-{tag}"))
    fp = wait_running(kube, NS, first, timeout=90)
    uid, cpus = claim_cpus(kube, fp)
    rest = other(cpus)
    wait_for(
        f"claim container pinned to {cpus}",
        lambda: container_process(rig, fp, "c0").cpus_allowed_list == cpus,
        10,
    )
    assert container_process(rig, fp, "c0").environ[f"DRA_CPUSET_{uid}"] == cpus
    wait_for(f"shared pool shrinks to {rest}", lambda: seen_inside(kube, shared) == rest, 20)
    assert container_process(rig, sp, "main").cpus_allowed_list == rest

    # The runtime rewrites the claim container's cpuset (runc update writes this file under
    # cgroupfs v1): the fallback puts the claim's CPUs back.
    cpuset = container_cgroup(rig, fp, "c0", "cpuset") / "cpuset.cpus"
    cpuset.write_text("0-1")
    wait_for("rewrite undone", lambda: cpuset.read_text().strip() == cpus, 5, interval=0.05)
    assert container_process(rig, fp, "c0").cpus_allowed_list == cpus

    # Deleting the claim pod unprepares the claim: the shared container widens again.
    created.delete_pod(first)
    wait_for("shared pool widens to 0-1", lambda: seen_inside(kube, shared) == "0-1", 30)
    assert container_process(rig, sp, "main").cpus_allowed_list == "0-1"

    second = f"e2e-excl2-{tag}"
    created.pod(claim_pod(rig, second, f"e2e-{tag}"))
    sec = wait_running(kube, NS, second, timeout=90)
    _, cpus = claim_cpus(kube, sec)
    rest = other(cpus)
    wait_for(
        f"second claim container pinned to {cpus}",
        lambda: container_process(rig, sec, "c0").cpus_allowed_list == cpus,
        10,
    )
    wait_for(f"shared pool shrinks to {rest}", lambda: seen_inside(kube, shared) == rest, 20)

    # NRI comes back: dracpu connects (a new socket cuts its redial delay short), Synchronize
    # keeps every pin, and the fallback stops.
    containerd_without_nri.restart(nri=True)
    wait_for("NRI took over", lambda: drv.status()["enforcement"] == "nri", 20)
    assert metric(drv, FALLBACK_ACTIVE) == 0
    log = drv.log.read_text()
    assert SYNCED in log, log[-2000:]
    assert "NRI connected: handing enforcement over to it" in log, log[-2000:]
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # sampled for a while: nothing moves at the handover
        assert container_process(rig, sec, "c0").cpus_allowed_list == cpus
        assert container_process(rig, sp, "main").cpus_allowed_list == rest
        time.sleep(0.2)
    for name in (second, shared):
        pod = get(kube, f"/api/v1/namespaces/{NS}/pods/{name}")
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0, pod["status"]
