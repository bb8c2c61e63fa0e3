"""CPUs and memory of one claim on one NUMA node, through the rig's real scheduler, kubelet and
containerd NRI, with ``dracpu run --memory-driver`` as the node's ``dra.cpu`` and ``dra.memory``.

One ResourceClaim asks both drivers (1 CPU, 64 MiB of memory, 2 hugepages of 2 MiB) with
``matchAttribute: resource.kubernetes.io/numaNode``. This machine has one NUMA node, so the
alignment itself cannot fail here; what can: the allocation's devices must share one numaNode
attribute in the published slices, the container must run on exactly the claimed CPUs and NUMA
node (``Cpus_allowed_list``, ``Mems_allowed_list``, ``cpuset.mems``), its env must carry both
drivers' CDI variables, and a claim whose requests cannot fit together on one node must stay
unschedulable with the scheduler's reason. The hugetlb limit is checked where it can land (see
``_hugetlb_limit``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dracpu.core.quantity import parse_bytes
from tests.e2e.dra_driver import DracpuDaemon
from tests.e2e.kube import (
    CGROUP_ROOT,
    RESOURCE,
    Created,
    busybox_container,
    cdi_spec,
    claim_of,
    claim_status_cpus,
    container_cgroup,
    container_id,
    container_process,
    event_messages,
    get,
    node_slices,
    pod_body,
    pod_cgroup,
    wait_for,
    wait_running,
)
from tests.e2e.rig import Rig

pytestmark = pytest.mark.e2e

NS = "default"
NUMA = "resource.kubernetes.io/numaNode"
HUGEPAGES = Path("/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages")
PAGES = 2
DaemonFactory = Callable[..., DracpuDaemon]


@pytest.fixture
def host_hugepages() -> Iterator[int]:
    """Two more 2 MiB hugepages on NUMA node 0 for the test, the old count put back after the
    daemon and the pods are gone (it is requested before them, so it is torn down after)."""
    if not HUGEPAGES.exists():
        pytest.skip(f"needs 2 MiB hugepages on NUMA node 0 ({HUGEPAGES} missing)")
    before = int(HUGEPAGES.read_text())
    try:
        HUGEPAGES.write_text(f"{before + PAGES}\n")
        got = int(HUGEPAGES.read_text())
        assert got == before + PAGES, f"the kernel gave {got - before} of {PAGES} hugepages"
        yield got
    finally:
        HUGEPAGES.write_text(f"{before}\n")


def _request(name: str, device_class: str, capacity: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "exactly": {"deviceClassName": device_class, "capacity": {"requests": capacity}},
    }


def _template(created: Created, name: str, requests: list[dict[str, Any]]) -> None:
    spec = {
        "devices": {
            "requests": requests,
            "constraints": [{"requests": [r["name"] for r in requests], "matchAttribute": NUMA}],
        }
    }
    created.post(
        f"{RESOURCE}/namespaces/{NS}/resourceclaimtemplates",
        {"metadata": {"name": name}, "spec": {"spec": spec}},
    )


def _pod(rig: Rig, name: str, template: str, resources: dict[str, Any]) -> dict[str, Any]:
    main = busybox_container(
        rig, "main", "sleep 3600", resources={**resources, "claims": [{"name": "aligned"}]}
    )
    return pod_body(
        name, [main], resourceClaims=[{"name": "aligned", "resourceClaimTemplateName": template}]
    )


def _devices(kube: httpx.Client, rig: Rig) -> dict[tuple[str, str], dict[str, Any]]:
    """(driver, device name) → the device as published in the node's slices of both drivers."""
    return {
        (s["spec"]["driver"], d["name"]): d
        for driver in ("dra.cpu", "dra.memory")
        for s in node_slices(kube, rig, driver)
        for d in s["spec"]["devices"]
    }


def _hugetlb_limit(rig: Rig, pod: dict[str, Any]) -> str | None:
    """``hugetlb.2MB.max`` of the container in the cgroup v2 hierarchy that has hugetlb (this
    hybrid host: ``/sys/fs/cgroup/unified``), or None when the container has no cgroup there."""
    relative = pod_cgroup(rig, pod, "cpuset").relative_to(CGROUP_ROOT / "cpuset")
    path = CGROUP_ROOT / "unified" / relative / container_id(pod, "main") / "hugetlb.2MB.max"
    return path.read_text().strip() if path.exists() else None


def _oci_resources(rig: Rig, pod: dict[str, Any]) -> dict[str, Any]:
    """``linux.resources`` of the OCI spec containerd handed runc for the container (its
    bundle's ``config.json``): what is left of the NRI adjustment after containerd."""
    state = rig.state_dir / "containerd" / "state" / "io.containerd.runtime.v2.task"
    bundle = state / rig.containerd_namespace / container_id(pod, "main") / "config.json"
    resources: dict[str, Any] = json.loads(bundle.read_text())["linux"]["resources"]
    return resources


def _hugetlb_disabled(rig: Rig) -> bool:
    """containerd's CRI ``disable_hugetlb_controller`` (true unless the config says false)."""
    text = (rig.state_dir / "containerd.toml").read_text()
    return "disable_hugetlb_controller = false" not in text


def test_cpu_and_memory_claim_on_one_numa_node(
    host_hugepages: int,
    rig: Rig,
    kube: httpx.Client,
    dracpu_daemon_factory: DaemonFactory,
    created: Created,
    dracpu_class: str,
    dracpu_memory_classes: list[str],
) -> None:
    assert {"dra.memory", "dra.hugepages-2m"} <= set(dracpu_memory_classes)
    daemon = dracpu_daemon_factory(
        cpu_device_mode="grouped", group_by="numanode", memory_driver="true"
    )
    wanted = {("dra.cpu", "cpudevnuma000"), ("dra.memory", "memory-numa000")}
    wanted.add(("dra.memory", "hugepages-2mi-numa000"))

    def all_published() -> dict[tuple[str, str], dict[str, Any]] | None:
        found = _devices(kube, rig)
        return found if found.keys() >= wanted else None

    published = wait_for("both drivers' slices", all_published, 20)
    assert published is not None
    tag = uuid.uuid4().hex[:6]

    # --- the aligned claim: scheduled, prepared by both drivers, enforced through NRI ---------
    _template(
        created,
        f"aligned-{tag}",
        [
            _request("cpus", "dra.cpu", {"dra.cpu/cpu": "1"}),
            _request("mem", "dra.memory", {"size": "64Mi"}),
            _request("hp", "dra.hugepages-2m", {"size": f"{2 * PAGES}Mi"}),
        ],
    )
    one_cpu = {"cpu": "1", "memory": "64Mi"}
    name = f"e2e-aligned-{tag}"
    created.pod(_pod(rig, name, f"aligned-{tag}", {"requests": one_cpu, "limits": one_cpu}))
    pod = wait_running(kube, NS, name, timeout=90)
    claim = claim_of(kube, pod, "aligned")
    uid = claim["metadata"]["uid"]
    results = claim["status"]["allocation"]["devices"]["results"]
    by_request = {r["request"]: r for r in results}
    assert sorted(by_request) == ["cpus", "hp", "mem"], results
    assert by_request["cpus"]["driver"] == "dra.cpu"
    assert by_request["mem"]["driver"] == by_request["hp"]["driver"] == "dra.memory"
    assert by_request["mem"]["device"] == "memory-numa000"
    assert by_request["hp"]["device"] == "hugepages-2mi-numa000"
    nodes = {published[(r["driver"], r["device"])]["attributes"][NUMA]["int"] for r in results}
    assert nodes == {0}, (nodes, results)
    assert parse_bytes(by_request["mem"]["consumedCapacity"]["size"]) == 64 << 20
    assert parse_bytes(by_request["hp"]["consumedCapacity"]["size"]) == (2 * PAGES) << 20

    cpus = claim_status_cpus(kube, claim)
    proc = container_process(rig, pod, "main")
    env = proc.environ
    assert env[f"DRA_CPUSET_{uid}"] == cpus == proc.cpus_allowed_list, (cpus, proc)
    assert env[f"DRAMEMORY_{uid}_NUMANodes"] == "0" == proc.mems_allowed_list, proc
    assert env[f"DRAMEMORY_{uid}_memory"] == "numanode:0,size:64Mi"
    assert env[f"DRAMEMORY_{uid}_hugepages_2Mi"] == f"numanode:0,size:{2 * PAGES}Mi"
    mems_file = container_cgroup(rig, pod, "main", "cpuset") / "cpuset.mems"
    assert mems_file.read_text().strip() == "0"
    assert cdi_spec(rig, uid).is_file()
    assert cdi_spec(rig, uid, "memory").is_file()
    # dracpu's NRI adjustment reached runc's spec: the claim's CPUs and NUMA node. Its hugetlb
    # limit (2MB: 4 MiB, 1GB: none published here) is dropped by containerd when its CRI
    # `disable_hugetlb_controller` is true, the default and the rig's setting; with it false,
    # runc would get it but has no hugetlb hierarchy it uses on this host (cgroup v1 without
    # hugetlb; the v2 `unified` mount has it, but runc's v1 manager does not write there).
    oci = _oci_resources(rig, pod)
    assert oci["cpu"]["cpus"] == cpus, oci
    assert oci["cpu"]["mems"] == "0", oci
    if _hugetlb_disabled(rig):
        assert not oci.get("hugepageLimits"), oci
    else:
        assert {"pageSize": "2MB", "limit": (2 * PAGES) << 20} in oci["hugepageLimits"], oci
    print(f"hugetlb.2MB.max in the v2 hierarchy: {_hugetlb_limit(rig, pod)}")
    status = daemon.status()
    assert [(c["uid"], c["cpus"]) for c in status["claims"]] == [(uid, cpus)], status["claims"]
    memory = status["memoryDriver"]
    assert memory["registration"]["registered"], memory
    assert memory["publisher"]["state"] == "in-sync", memory
    assert [(m["uid"], m["numaNodes"]) for m in memory["claims"]] == [(uid, [0])], memory
    assert status["ready"], status["notReady"]

    # --- a claim whose requests cannot share one NUMA node: unschedulable ---------------------
    size = published[("dra.memory", "memory-numa000")]["capacity"]["size"]["value"]
    over = f"{parse_bytes(size) * 6 // 10 >> 20}Mi"  # two of these do not fit on the one node
    _template(
        created,
        f"toobig-{tag}",
        [
            _request("cpus", "dra.cpu", {"dra.cpu/cpu": "1"}),
            _request("mem-a", "dra.memory", {"size": over}),
            _request("mem-b", "dra.memory", {"size": over}),
        ],
    )
    big = f"e2e-toobig-{tag}"
    created.pod(_pod(rig, big, f"toobig-{tag}", {}))
    reason = wait_for(
        "FailedScheduling of the claim that does not fit",
        lambda: [m for m in event_messages(kube, NS, big) if m.startswith("FailedScheduling")],
        30,
    )
    print(f"scheduler: {reason}")
    pending = get(kube, f"/api/v1/namespaces/{NS}/pods/{big}")
    assert pending["status"]["phase"] == "Pending"
    assert not pending["spec"].get("nodeName"), pending["spec"]
    (unplaced,) = pending["status"].get("resourceClaimStatuses", [{}])
    big_claim = get(
        kube, f"{RESOURCE}/namespaces/{NS}/resourceclaims/{unplaced['resourceClaimName']}"
    )
    assert "allocation" not in big_claim.get("status", {}), big_claim["status"]
    created.delete_pod(big)

    # --- deleting the pod unprepares both parts ------------------------------------------------
    created.delete_pod(name)
    wait_for("CPU CDI spec removed", lambda: not cdi_spec(rig, uid).exists(), 30)
    wait_for("memory CDI spec removed", lambda: not cdi_spec(rig, uid, "memory").exists(), 30)
    wait_for("claims released", lambda: not daemon.status()["claims"], 30)
    assert daemon.status()["memoryDriver"]["claims"] == []
