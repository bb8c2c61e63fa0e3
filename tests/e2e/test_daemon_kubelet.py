"""``dracpu run`` as the rig node's DRA driver, through the real scheduler, kubelet and containerd.

Each mode runs one of upstream's ``hack/examples`` (tests/e2e/data/upstream, copied unchanged)
with the claims turned into ResourceClaimTemplates of the same spec: the only edits are the CPU
counts (this machine has 2 CPUs, none reserved) and the image (the rig's local pause image). A pod
goes scheduler -> kubelet -> dracpu: the claim is prepared, its CPUs reach the claim's
``status.devices[].data``, the container's env (``DRA_CPUSET_<uid>``) and its CPU affinity (NRI);
deleting the pod unprepares the claim and removes its CDI spec.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.dra_driver import DracpuDaemon
from tests.e2e.examples import (
    NS,
    Example,
    allocated_devices,
    check_deleted,
    check_pod,
    upstream_example,
)
from tests.e2e.kube import (
    Created,
    busybox_container,
    container_process,
    event_messages,
    get,
    node_slices,
    pod_body,
    wait_for,
    wait_running,
)
from tests.e2e.rig import Rig

pytestmark = pytest.mark.e2e

DaemonFactory = Callable[..., DracpuDaemon]


@pytest.mark.parametrize(
    ("group_by", "device"),
    [("numanode", "cpudevnuma000"), ("socket", "cpudevsocket000"), ("machine", "cpudevmachine")],
)
def test_grouped_example_through_the_kubelet(
    rig: Rig,
    kube: httpx.Client,
    dracpu_daemon_factory: DaemonFactory,
    created: Created,
    dracpu_class: str,
    group_by: str,
    device: str,
) -> None:
    daemon = dracpu_daemon_factory(cpu_device_mode="grouped", group_by=group_by)
    wait_for(f"slice of {device}", lambda: allocated_devices(kube, rig) == [device], 20)
    ex = Example(rig, upstream_example("pod_with_resource_claim_grouped_mode"))
    ex.create(created)
    found = check_pod(rig, kube, ex, daemon)
    ((uid, cpus),) = found.values()
    assert len(cpus.replace("-", ",").split(",")) == 1, cpus
    check_deleted(rig, kube, created, ex, daemon, [uid])


def test_individual_example_through_the_kubelet(
    rig: Rig,
    kube: httpx.Client,
    dracpu_daemon_factory: DaemonFactory,
    created: Created,
    dracpu_class: str,
) -> None:
    daemon = dracpu_daemon_factory(cpu_device_mode="individual")
    wait_for(
        "one device per CPU", lambda: allocated_devices(kube, rig) == ["cpudev000", "cpudev001"], 20
    )
    ex = Example(rig, upstream_example("pod_with_resource_claim_individual_mode"))
    ex.create(created)
    found = check_pod(rig, kube, ex, daemon)
    assert sorted(cpus for _, cpus in found.values()) == ["0", "1"], found
    check_deleted(rig, kube, created, ex, daemon, [uid for uid, _ in found.values()])


def test_machine_mode_opaque_cpuset_config_through_the_kubelet(
    rig: Rig,
    kube: httpx.Client,
    dracpu_daemon_factory: DaemonFactory,
    created: Created,
    dracpu_class: str,
) -> None:
    daemon = dracpu_daemon_factory(cpu_device_mode="grouped", group_by="machine")
    wait_for("machine device", lambda: allocated_devices(kube, rig) == ["cpudevmachine"], 20)
    ex = Example(rig, upstream_example("pod_with_resource_claim_grouped_mode"))
    config = [
        {
            "requests": ["req-cpu-slice"],
            "opaque": {
                "driver": "dra.cpu",
                "parameters": {"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": "1"}},
            },
        }
    ]
    ex.create(created, config)
    found = check_pod(rig, kube, ex, daemon)
    ((uid, cpus),) = found.values()
    assert cpus == "1"
    check_deleted(rig, kube, created, ex, daemon, [uid])


def test_node_allocatable_mapping_keeps_claimed_cpus_from_plain_pods(
    rig: Rig,
    kube: httpx.Client,
    dracpu_daemon_factory: DaemonFactory,
    created: Created,
    dracpu_class: str,
    tmp_path: Path,
) -> None:
    """KEP-5517 on the rig (DRANodeAllocatableResources on in the scheduler and kubelet): the
    claim's CPU counts against the node's ``cpu``, so a plain pod cannot have it as well."""
    config = tmp_path / "driver.yaml"
    config.write_text("apiVersion: v1alpha1\npublishNodeAllocatableResourceMapping: true\n")
    daemon = dracpu_daemon_factory(cpu_device_mode="grouped", config=str(config))
    node = get(kube, f"/api/v1/nodes/{rig.node_name}")
    assert node["status"]["allocatable"]["cpu"] == "2", node["status"]["allocatable"]
    (dev,) = wait_for(
        "a device with its node-allocatable mapping",
        lambda: [
            d
            for s in node_slices(kube, rig)
            for d in s["spec"]["devices"]
            if d.get("nodeAllocatableResources")
        ],
        20,
    )
    # The API server kept the field (the gate is on): the claim's dra.cpu/cpu counts as node cpu.
    assert dev["nodeAllocatableResources"]["cpu"]["mapping"]["capacityKey"] == "dra.cpu/cpu"
    ex = Example(
        rig,
        upstream_example("pod_with_resource_claim_node_allocatable"),
        replicated_cpus=False,
    )
    ex.create(created)  # its container asks for cpu 1m: QoS only, the claim brings 1 CPU
    ((uid, cpus),) = check_pod(rig, kube, ex, daemon).values()

    def plain(name: str, cpu: str) -> str:
        res = {"cpu": cpu, "memory": "32Mi"}
        body = pod_body(
            f"{name}-{ex.tag}",
            [busybox_container(rig, "main", "sleep 3600", resources={"requests": res})],
        )
        created.pod(body)
        return str(body["metadata"]["name"])

    # 2 CPUs - 1 claimed - 1m = 999m left: 1500m must not fit (it would without the mapping).
    big = plain("e2e-big", "1500m")
    wait_for(
        "FailedScheduling: Insufficient cpu",
        lambda: any("Insufficient cpu" in m for m in event_messages(kube, NS, big)),
        30,
    )
    assert get(kube, f"/api/v1/namespaces/{NS}/pods/{big}")["status"]["phase"] == "Pending"
    small = plain("e2e-small", "500m")
    sp = wait_running(kube, NS, small)
    assert container_process(rig, sp, "main").cpus_allowed_list == {"0": "1", "1": "0"}[cpus]
    created.delete_pod(big)
    check_deleted(rig, kube, created, ex, daemon, [uid])
