"""Helpers for e2e tests that run pods through the rig's real kubelet.

Pods are created in the API and checked there (phase, events, logs through the apiserver, which
asks the kubelet) and inside the container: the container's init process is found through its
cgroup (cgroupfs driver: ``/<cgroupRoot>/kubepods[/<qos>]/pod<uid>/<container id>``) and read in
``/proc`` (``Cpus_allowed_list``, environment). Blocking httpx calls; async tests run them in a
worker thread.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.e2e.rig import Rig

T = TypeVar("T")
CGROUP_ROOT = Path("/sys/fs/cgroup")
RESOURCE = "/apis/resource.k8s.io/v1"
SLICES = f"{RESOURCE}/resourceslices"


class WaitTimeout(AssertionError):
    """A condition did not hold in time; the message names what was awaited."""


def kube_client(rig: Rig, url: str | None = None) -> httpx.Client:
    """An httpx client for the rig's apiserver (or another one at ``url`` sharing its PKI)
    with the admin client certificate."""
    ctx = ssl.create_default_context(cafile=str(rig.ca_cert))
    ctx.load_cert_chain(str(rig.admin_cert), str(rig.admin_key))
    return httpx.Client(base_url=url or rig.apiserver_url, verify=ctx, timeout=15.0)


def node_client(rig: Rig) -> httpx.Client:
    """An httpx client with the kubelet's own identity (``system:node:<node>``)."""
    ctx = ssl.create_default_context(cafile=str(rig.ca_cert))
    ctx.load_cert_chain(str(rig.node_cert), str(rig.node_key))
    return httpx.Client(base_url=rig.apiserver_url, verify=ctx, timeout=15.0)


def wait_for(what: str, check: Callable[[], T], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Poll ``check()`` until it returns a truthy value; raise naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def get(kube: httpx.Client, path: str, **params: str) -> Any:
    r = kube.get(path, params=params)
    assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text[:300]}"
    return r.json()


def pod_path(ns: str, name: str) -> str:
    return f"/api/v1/namespaces/{ns}/pods/{name}"


def busybox_container(rig: Rig, name: str, script: str, **extra: Any) -> dict[str, Any]:
    """A busybox container running ``sh -c script`` that exits at once on SIGTERM."""
    return {
        "name": name,
        "image": rig.busybox_image,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", f"trap 'exit 0' TERM; {script} & wait"],
        **extra,
    }


def pod_body(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    """A Pod for the rig: no cluster DNS (``dnsPolicy: Default``), a short grace period."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "dnsPolicy": "Default",
            "containers": containers,
            **spec,
        },
    }


def wait_running(kube: httpx.Client, ns: str, name: str, timeout: float = 60.0) -> Any:
    """Wait for phase Running with every container started; fail early if the pod failed."""

    def check() -> Any:
        pod = get(kube, pod_path(ns, name))
        phase = pod["status"].get("phase")
        assert phase not in ("Failed", "Succeeded"), f"pod {ns}/{name} is {phase}: {pod['status']}"
        statuses = pod["status"].get("containerStatuses", [])
        if phase == "Running" and statuses and all(s.get("started") for s in statuses):
            return pod
        return None

    try:
        return wait_for(f"pod {ns}/{name} Running", check, timeout)
    except WaitTimeout as exc:
        raise WaitTimeout(f"{exc}; events: {event_messages(kube, ns, name)}") from None


def events(kube: httpx.Client, ns: str, name: str) -> list[dict[str, Any]]:
    """The core/v1 Events whose involved object is the pod ``ns/name``."""
    body = get(
        kube,
        f"/api/v1/namespaces/{ns}/events",
        fieldSelector=f"involvedObject.kind=Pod,involvedObject.name={name}",
    )
    items: list[dict[str, Any]] = body["items"]
    return items


def event_messages(kube: httpx.Client, ns: str, name: str) -> list[str]:
    return [f"{e['reason']}: {e.get('message', '')}" for e in events(kube, ns, name)]


def pod_log(kube: httpx.Client, ns: str, name: str, container: str) -> str:
    """The container's log through the apiserver (which fetches it from the kubelet)."""
    r = kube.get(f"{pod_path(ns, name)}/log", params={"container": container})
    assert r.status_code == 200, f"GET log {ns}/{name}/{container}: {r.status_code} {r.text}"
    return r.text


def container_id(pod: dict[str, Any], container: str) -> str:
    """The runtime's container ID from the pod status (``containerd://<id>``); init containers
    (sidecars too) included."""
    status = pod["status"]
    for s in status["containerStatuses"] + status.get("initContainerStatuses", []):
        if s["name"] == container:
            cid: str = s["containerID"]
            return cid.split("://", 1)[1]
    raise AssertionError(f"no status for container {container}")


def _hierarchy(subsystem: str) -> Path:
    v1 = CGROUP_ROOT / subsystem
    return v1 if (v1 / "cgroup.procs").exists() else CGROUP_ROOT


def pod_cgroup(rig: Rig, pod: dict[str, Any], subsystem: str = "cpu") -> Path:
    """The pod's cgroup directory in ``subsystem``'s hierarchy (any QoS class)."""
    uid = pod["metadata"]["uid"]
    base = _hierarchy(subsystem) / rig.cgroup_parent / "kubepods"
    found = [p for p in (base / f"pod{uid}", *base.glob(f"*/pod{uid}")) if p.is_dir()]
    assert len(found) == 1, f"pod cgroup of {uid} under {base}: {found}"
    return found[0]


def container_cgroup(rig: Rig, pod: dict[str, Any], container: str, subsystem: str = "cpu") -> Path:
    path = pod_cgroup(rig, pod, subsystem) / container_id(pod, container)
    assert path.is_dir(), f"no cgroup {path}"
    return path


@dataclass(frozen=True)
class ContainerProcess:
    """The init process of one container, read from the host."""

    pid: int
    cpus_allowed_list: str
    environ: dict[str, str]
    mems_allowed_list: str = ""


def container_process(rig: Rig, pod: dict[str, Any], container: str) -> ContainerProcess:
    """The container's PID 1 (``NSpid`` ends in 1) among the processes of its cgroup."""
    procs = container_cgroup(rig, pod, container, "pids") / "cgroup.procs"
    for line in procs.read_text().split():
        status = Path(f"/proc/{line}/status").read_text()
        fields = dict(ln.split(":\t", 1) for ln in status.splitlines() if ":\t" in ln)
        if fields.get("NSpid", "").split()[-1:] == ["1"]:
            raw = Path(f"/proc/{line}/environ").read_bytes().split(b"\0")
            env = dict(e.decode().split("=", 1) for e in raw if b"=" in e)
            return ContainerProcess(
                int(line),
                fields["Cpus_allowed_list"].strip(),
                env,
                fields.get("Mems_allowed_list", "").strip(),
            )
    raise AssertionError(f"no init process in {procs}")


def cpu_quota(cgroup: Path) -> int:
    """CFS quota in µs per 100 ms period; -1 when unlimited (v1 ``cfs_quota_us``/v2 ``cpu.max``)."""
    v1 = cgroup / "cpu.cfs_quota_us"
    if v1.exists():
        return int(v1.read_text())
    quota = (cgroup / "cpu.max").read_text().split()[0]
    return -1 if quota == "max" else int(quota)


def cgroup_cpuset(rig: Rig, pod: dict[str, Any], container: str) -> str:
    cg = container_cgroup(rig, pod, container, "cpuset")
    name = "cpuset.cpus" if (cg / "cpuset.cpus").exists() else "cpuset.cpus.effective"
    return (cg / name).read_text().strip()


class Created:
    """API objects a test made; :meth:`cleanup` deletes pods first and waits until the kubelet
    has finished with them (so claims are unprepared), then the rest in reverse order."""

    def __init__(self, kube: httpx.Client, ns: str = "default") -> None:
        self.kube, self.ns = kube, ns
        self.paths: list[str] = []

    def post(self, collection: str, body: dict[str, Any]) -> Any:
        r = self.kube.post(collection, json=body)
        assert r.status_code == 201, f"POST {collection}: {r.status_code} {r.text}"
        obj = r.json()
        self.paths.append(f"{collection}/{obj['metadata']['name']}")
        return obj

    def pod(self, body: dict[str, Any]) -> Any:
        return self.post(f"/api/v1/namespaces/{self.ns}/pods", body)

    def delete_pod(self, name: str, timeout: float = 60.0) -> None:
        """Delete gracefully and wait until the object is gone (the kubelet confirmed it)."""
        path = pod_path(self.ns, name)
        self.kube.delete(path)
        wait_for(f"pod {name} deleted", lambda: self.kube.get(path).status_code == 404, timeout)
        if path in self.paths:
            self.paths.remove(path)

    def cleanup(self) -> None:
        for path in [p for p in self.paths if "/pods/" in p]:
            try:
                self.delete_pod(path.rsplit("/", 1)[1])
            except WaitTimeout:
                self.kube.delete(path, params={"gracePeriodSeconds": "0"})
        for path in reversed(self.paths):
            self.kube.delete(path)
        self.paths.clear()


# ------------------------------------------------------------------------------ DRA
def node_slices(kube: httpx.Client, rig: Rig, driver: str = "dra.cpu") -> list[dict[str, Any]]:
    """The node's ResourceSlices of ``driver``."""
    body = get(kube, SLICES, fieldSelector=f"spec.nodeName={rig.node_name},spec.driver={driver}")
    items: list[dict[str, Any]] = body["items"]
    return items


def claim(created: Created, device_class: str, name: str) -> dict[str, Any]:
    """A ResourceClaim for one device of ``device_class`` (request ``cpus``)."""
    obj: dict[str, Any] = created.post(
        f"{RESOURCE}/namespaces/{created.ns}/resourceclaims",
        {
            "metadata": {"name": name},
            "spec": {
                "devices": {
                    "requests": [{"name": "cpus", "exactly": {"deviceClassName": device_class}}]
                }
            },
        },
    )
    return obj


def claim_pod(
    rig: Rig, name: str, claim_name: str, *, resources: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    """A pod whose container ``main`` uses claim ``cpus`` (option B when ``resources`` is set)."""
    main = busybox_container(
        rig,
        "main",
        "echo started; sleep 3600",
        resources={"claims": [{"name": "cpus"}], **(resources or {})},
    )
    return pod_body(
        name, [main], resourceClaims=[{"name": "cpus", "resourceClaimName": claim_name}], **spec
    )


def claim_of(
    kube: httpx.Client, pod: dict[str, Any], ref: str, ns: str = "default"
) -> dict[str, Any]:
    """The ResourceClaim the pod's claim reference ``ref`` resolved to (from the pod status)."""
    (name,) = [
        s["resourceClaimName"] for s in pod["status"]["resourceClaimStatuses"] if s["name"] == ref
    ]
    obj: dict[str, Any] = get(kube, f"{RESOURCE}/namespaces/{ns}/resourceclaims/{name}")
    return obj


def claim_status_cpus(kube: httpx.Client, claim: dict[str, Any], ns: str = "default") -> str:
    """Waits for dracpu's ``status.devices[].data`` of the claim; returns ``claimCpuset``."""
    path = f"{RESOURCE}/namespaces/{ns}/resourceclaims/{claim['metadata']['name']}"

    def devices() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = get(kube, path).get("status", {}).get("devices", [])
        return [d for d in found if d.get("data")]

    (dev,) = wait_for(f"claim {path} status.devices", devices, 20)
    assert dev["driver"] == "dra.cpu", dev
    results = claim["status"]["allocation"]["devices"]["results"]
    assert dev["device"] in {r["device"] for r in results}, (dev, results)
    cpus: str = dev["data"]["claimCpuset"]
    return cpus


def cdi_spec(rig: Rig, uid: str, kind: str = "cpu") -> Path:
    """The CDI spec file of claim ``uid`` for ``kind`` ``cpu`` (dra.cpu) or ``memory``."""
    return rig.cdi_dir / f"dra.k8s.io-{kind}_claim-{uid}.json"
