"""``dracpu run`` as the rig node's DRA driver, through the real scheduler, kubelet and containerd.

Each mode runs one of upstream's ``hack/examples`` (tests/e2e/data/upstream, copied unchanged)
with the claims turned into ResourceClaimTemplates of the same spec: the only edits are the CPU
counts (this machine has 2 CPUs, none reserved) and the image (the rig's local pause image). A pod
goes scheduler -> kubelet -> dracpu: the claim is prepared, its CPUs reach the claim's
``status.devices[].data``, the container's env (``DRA_CPUSET_<uid>``) and its CPU affinity (NRI);
deleting the pod unprepares the claim and removes its CDI spec.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.dra_driver import DracpuDaemon
from tests.e2e.kube import (
    RESOURCE,
    Created,
    busybox_container,
    cdi_spec,
    claim_of,
    claim_status_cpus,
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

NS = "default"
EXAMPLES = Path(__file__).parent / "data" / "upstream"
DaemonFactory = Callable[..., DracpuDaemon]


def upstream_example(name: str) -> list[dict[str, Any]]:
    with (EXAMPLES / f"{name}.yaml").open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _scaled(spec: dict[str, Any], cpus: int) -> dict[str, Any]:
    """The claim spec with its CPU amount (capacity ``dra.cpu/cpu`` or ``count``) set to ``cpus``;
    asserts nothing else differs."""
    out = copy.deepcopy(spec)
    for req in out["devices"]["requests"]:
        exactly = req["exactly"]
        if "capacity" in exactly:
            exactly["capacity"]["requests"]["dra.cpu/cpu"] = str(cpus)
        else:
            exactly["count"] = cpus
    return out


class Example:
    """Upstream's pod and claims, as templates of this test (names suffixed with a tag)."""

    def __init__(
        self,
        rig: Rig,
        docs: list[dict[str, Any]],
        cpus: int = 1,
        *,
        pod_index: int = 0,
        replicated_cpus: bool = True,
    ) -> None:
        """``pod_index``: which of the example's pods (with the claims it names);
        ``replicated_cpus``: the containers repeat the claim's CPU count (rewritten to ``cpus``),
        as the examples without node-allocatable mapping do."""
        self.tag = uuid.uuid4().hex[:6]
        pod = [d for d in docs if d["kind"] == "Pod"][pod_index]
        wanted = {r["resourceClaimName"] for r in pod["spec"]["resourceClaims"]}
        self.claims = {
            d["metadata"]["name"]: d
            for d in docs
            if d["kind"] == "ResourceClaim" and d["metadata"]["name"] in wanted
        }
        self.pod = copy.deepcopy(pod)
        self.pod["metadata"]["name"] = self.name = f"{pod['metadata']['name']}-{self.tag}"
        spec = self.pod["spec"]
        spec["terminationGracePeriodSeconds"] = 2
        for ref in spec["resourceClaims"]:
            ref["resourceClaimTemplateName"] = self._template(ref.pop("resourceClaimName"))
        for c in spec["containers"]:
            c["image"], c["imagePullPolicy"] = rig.pause_image, "Never"
            for part in ("requests", "limits") if replicated_cpus else ():
                if "cpu" in c["resources"].get(part, {}):
                    c["resources"][part]["cpu"] = str(cpus)
        self.cpus = cpus

    def _template(self, claim: str) -> str:
        return f"{claim}-{self.tag}"

    def create(self, created: Created, config: list[dict[str, Any]] | None = None) -> None:
        for name, obj in self.claims.items():
            spec = _scaled(obj["spec"], self.cpus)
            if config is not None:
                spec["devices"]["config"] = config
            created.post(
                f"{RESOURCE}/namespaces/{NS}/resourceclaimtemplates",
                {"metadata": {"name": self._template(name)}, "spec": {"spec": spec}},
            )
        created.pod(self.pod)


def check_pod(
    rig: Rig, kube: httpx.Client, ex: Example, daemon: DracpuDaemon
) -> dict[str, tuple[str, str]]:
    """The running pod's claims: env, claim status and CPU affinity agree. Returns
    {container: (claim uid, cpus)}."""
    pod = wait_running(kube, NS, ex.name, timeout=90)
    out: dict[str, tuple[str, str]] = {}
    for c in pod["spec"]["containers"]:
        (ref,) = [r["name"] for r in c["resources"]["claims"]]
        claim = claim_of(kube, pod, ref)
        uid = claim["metadata"]["uid"]
        assert [r["uid"] for r in claim["status"]["reservedFor"]] == [pod["metadata"]["uid"]]
        cpus = claim_status_cpus(kube, claim)
        proc = container_process(rig, pod, c["name"])
        env_name = f"DRA_CPUSET_{uid}"  # upstream's name keeps the UID's dashes
        assert proc.environ.get(env_name) == cpus, (env_name, proc.environ)
        assert proc.cpus_allowed_list == cpus, (c["name"], proc.cpus_allowed_list, cpus)
        assert cdi_spec(rig, uid).is_file()
        out[c["name"]] = (uid, cpus)
    held = {c["uid"]: c["cpus"] for c in daemon.status()["claims"]}
    assert held == {uid: cpus for uid, cpus in out.values()}, held
    return out


def check_deleted(
    rig: Rig,
    kube: httpx.Client,
    created: Created,
    ex: Example,
    daemon: DracpuDaemon,
    uids: list[str],
) -> None:
    created.delete_pod(ex.name)
    for uid in uids:
        wait_for(f"CDI spec of {uid} removed", lambda u=uid: not cdi_spec(rig, u).exists(), 30)
    wait_for("claims released", lambda: not daemon.status()["claims"], 30)


def allocated_devices(kube: httpx.Client, rig: Rig) -> list[str]:
    slices = wait_for("published slice", lambda: node_slices(kube, rig), 20)
    return sorted(d["name"] for s in slices for d in s["spec"]["devices"])


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
