"""A test "node agent" that plays the kubelet's part for pods bound to the rig's Node.

There is no kubelet on the rig. This helper does, in the kubelet's documented order, the parts of
its job a DRA driver can observe, using grpcio (an independent gRPC implementation) for both the
DRA and the CRI side, and the Kubernetes API over HTTPS:

1. read the pod and each of its ResourceClaims (checking the pod is in ``status.reservedFor``);
2. call ``NodePrepareResources`` on each driver's DRA socket, one call per driver with all the
   pod's claims for it, and collect the CDI device IDs per claim and request;
3. create the pod sandbox through CRI (``RunPodSandbox``) with a cgroup parent under the rig's
   cgroup, then create and start each container with the CDI devices of the claims it uses and
   the env, command and CPU/memory resources a kubelet would set;
4. report each container's ``Cpus_allowed_list`` (from ``/proc/<pid>/status``) and its cgroup
   ``cpuset.cpus``;
5. on deletion stop/remove the containers and the sandbox, then ``NodeUnprepareResources``.

Where it differs from a real kubelet is listed in docs/e2e.md (host network, no pod status
writes, no probes/volumes/image pulls, no CPU/memory manager, no plugin registration watching).
CRI and DRA stubs are compiled at test time (never committed): CRI from the ``k8s.io/cri-api``
module in the Go module cache, DRA v1 from the repo's ``protos/``.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc  # type: ignore[import-untyped]
import httpx

from tests.e2e.rig import REPO_ROOT, Rig
from tests.support.grpcio_protos import load_grpc_modules

CRI_PROTO = "k8s.io/cri_api/runtime/v1/api.proto"
DRA_PROTO = "k8s.io/kubelet/pkg/apis/dra/v1/api.proto"
_PROTO_CACHE = Path.home() / ".cache" / "dracpu" / "cri-proto"


class NodeAgentError(Exception):
    """The node agent could not do one kubelet step; the message names the object and step."""


# ------------------------------------------------------------------------------ stubs
@cache
def cri_modules(version: str) -> tuple[ModuleType, ModuleType]:
    """``(pb2, pb2_grpc)`` for CRI runtime.v1 from ``k8s.io/cri-api@version`` (Go module cache).

    The proto is copied to a cache dir under an importable path (the module dir has an ``@``).
    """
    go = shutil.which("go")
    if go is None:
        raise NodeAgentError("go: not on PATH; needed to locate k8s.io/cri-api's api.proto")
    out = subprocess.run(
        [go, "mod", "download", "-json", f"k8s.io/cri-api@{version}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT / "hack" / "rig" / "k8s",
    )
    src = Path(json.loads(out.stdout)["Dir"]) / "pkg/apis/runtime/v1/api.proto"
    root = _PROTO_CACHE / version
    dst = root / CRI_PROTO
    if not dst.exists() or dst.read_bytes() != src.read_bytes():
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    return load_grpc_modules(root, CRI_PROTO)


@cache
def dra_modules() -> tuple[ModuleType, ModuleType]:
    """``(pb2, pb2_grpc)`` for the kubelet DRA v1 service from the repo's ``protos/``."""
    return load_grpc_modules(REPO_ROOT / "protos", DRA_PROTO)


def cri_channel(rig: Rig) -> grpc.Channel:
    return grpc.insecure_channel(f"unix://{rig.cri_socket}")


class CRI:
    """CRI runtime service client on the rig's containerd socket."""

    def __init__(self, rig: Rig) -> None:
        self.pb, grpc_mod = cri_modules(rig.versions["KUBE_STAGING_VERSION"])
        self.channel = cri_channel(rig)
        self.runtime = grpc_mod.RuntimeServiceStub(self.channel)
        self.images = grpc_mod.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def container_pid(self, container_id: str) -> int:
        resp = self.runtime.ContainerStatus(
            self.pb.ContainerStatusRequest(container_id=container_id, verbose=True), timeout=10
        )
        return int(json.loads(resp.info["info"])["pid"])


# ------------------------------------------------------------------------------ kube API
def kube_client(rig: Rig, url: str | None = None) -> httpx.Client:
    """An httpx client for the rig's apiserver (or another one at ``url`` sharing its PKI)
    with the admin client certificate."""
    ctx = ssl.create_default_context(cafile=str(rig.ca_cert))
    ctx.load_cert_chain(str(rig.admin_cert), str(rig.admin_key))
    return httpx.Client(base_url=url or rig.apiserver_url, verify=ctx, timeout=15.0)


def _get(client: httpx.Client, path: str) -> dict[str, Any]:
    r = client.get(path)
    if r.status_code != 200:
        raise NodeAgentError(f"GET {path}: HTTP {r.status_code}: {r.text[:300]}")
    body: dict[str, Any] = r.json()
    return body


# ------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class ContainerReport:
    """What a container sees of its CPUs once started."""

    name: str
    container_id: str
    pid: int
    cpus_allowed_list: str
    cgroup_cpuset: str | None
    environ: Mapping[str, str]


@dataclass
class RunningPod:
    """A pod the agent started; pass it to :meth:`NodeAgent.stop_pod`."""

    namespace: str
    name: str
    uid: str
    sandbox_id: str
    containers: dict[str, str] = field(default_factory=dict)  # name -> container id
    # driver -> claims prepared with it (namespace, name, uid)
    prepared: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    cdi_devices: dict[str, list[str]] = field(default_factory=dict)  # container -> CDI ids


def _proc_status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise NodeAgentError(f"/proc/{pid}/status has no {key} line")


def _cgroup_cpuset(pid: int) -> str | None:
    """The container's ``cpuset.cpus`` from its cgroup (v1 cpuset hierarchy or v2 unified)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuset" in controllers.split(","):
            f = Path("/sys/fs/cgroup/cpuset") / path.lstrip("/") / "cpuset.cpus"
        elif controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            f = Path("/sys/fs/cgroup") / path.lstrip("/") / "cpuset.cpus.effective"
        else:
            continue
        if f.exists():
            return f.read_text().strip()
    return None


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode(errors="replace").partition("=") for item in raw if item)
    return {k: v for k, _, v in pairs}


def _quantity_millicpu(q: str) -> int:
    if q.endswith("m"):
        return int(q[:-1])
    return int(float(q) * 1000)


_MEM_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}


def _quantity_bytes(q: str) -> int:
    for suffix, mult in _MEM_SUFFIX.items():
        if q.endswith(suffix):
            return int(float(q[: -len(suffix)]) * mult)
    return int(q)


# ------------------------------------------------------------------------------ the agent
class NodeAgent:
    """Runs pods bound to the rig's Node through DRA + CRI, the way a kubelet would.

    ``dra_sockets`` maps a DRA driver name to its kubelet plugin socket (what a kubelet would
    learn from plugin registration).
    """

    def __init__(self, rig: Rig, dra_sockets: Mapping[str, Path] | None = None) -> None:
        self.rig = rig
        self.dra_sockets = dict(dra_sockets or {})
        self.kube = kube_client(rig)
        self.cri = CRI(rig)

    def close(self) -> None:
        self.kube.close()
        self.cri.close()

    # -- steps 1 and 2: claims and NodePrepareResources ---------------------------------------
    def pod_claims(self, pod: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The pod's ResourceClaims by the pod-level claim name, checked as the kubelet does."""
        meta = pod["metadata"]
        ns, uid = meta["namespace"], meta["uid"]
        statuses = {
            s["name"]: s.get("resourceClaimName")
            for s in pod.get("status", {}).get("resourceClaimStatuses", [])
        }
        claims = {}
        for ref in pod["spec"].get("resourceClaims", []):
            claim_name = ref.get("resourceClaimName") or statuses.get(ref["name"])
            if not claim_name:
                raise NodeAgentError(
                    f"pod {ns}/{meta['name']}: claim {ref['name']!r} has no ResourceClaim yet"
                )
            claim = _get(
                self.kube, f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims/{claim_name}"
            )
            reserved = [r.get("uid") for r in claim.get("status", {}).get("reservedFor", [])]
            if uid not in reserved:
                raise NodeAgentError(
                    f"pod {ns}/{meta['name']} is not allowed to use ResourceClaim "
                    f"{ns}/{claim_name}: not in status.reservedFor {reserved}"
                )
            claims[ref["name"]] = claim
        return claims

    def prepare(
        self, claims: Mapping[str, Mapping[str, Any]]
    ) -> tuple[dict[str, dict[str, list[str]]], dict[str, list[tuple[str, str, str]]]]:
        """Call NodePrepareResources per driver; return CDI ids by claim uid and request name
        (``""`` key: all requests) and the claims prepared per driver."""
        pb, grpc_mod = dra_modules()
        by_driver: dict[str, list[tuple[str, str, str]]] = {}
        for claim in claims.values():
            results = claim.get("status", {}).get("allocation", {}).get("devices", {})
            m = claim["metadata"]
            for driver in sorted({r["driver"] for r in results.get("results", [])}):
                by_driver.setdefault(driver, []).append((m["namespace"], m["name"], m["uid"]))
        cdi: dict[str, dict[str, list[str]]] = {}
        for driver, refs in by_driver.items():
            sock = self.dra_sockets.get(driver)
            if sock is None:
                raise NodeAgentError(f"driver {driver!r}: no DRA socket given to the node agent")
            req = pb.NodePrepareResourcesRequest(
                claims=[pb.Claim(namespace=n, name=nm, uid=u) for n, nm, u in refs]
            )
            with grpc.insecure_channel(f"unix://{sock}") as ch:
                resp = grpc_mod.DRAPluginStub(ch).NodePrepareResources(req, timeout=45)
            for _, nm, u in refs:
                if u not in resp.claims:
                    raise NodeAgentError(f"driver {driver!r}: no result for claim {nm} ({u})")
                res = resp.claims[u]
                if res.error:
                    raise NodeAgentError(f"driver {driver!r}: prepare claim {nm}: {res.error}")
                per_req = cdi.setdefault(u, {})
                for dev in res.devices:
                    for rn in list(dev.request_names) or [""]:
                        per_req.setdefault(rn, []).extend(dev.cdi_device_ids)
        return cdi, by_driver

    def unprepare(self, prepared: Mapping[str, Sequence[tuple[str, str, str]]]) -> None:
        pb, grpc_mod = dra_modules()
        for driver, refs in prepared.items():
            req = pb.NodeUnprepareResourcesRequest(
                claims=[pb.Claim(namespace=n, name=nm, uid=u) for n, nm, u in refs]
            )
            with grpc.insecure_channel(f"unix://{self.dra_sockets[driver]}") as ch:
                resp = grpc_mod.DRAPluginStub(ch).NodeUnprepareResources(req, timeout=45)
            errors = {u: r.error for u, r in resp.claims.items() if r.error}
            if errors:
                raise NodeAgentError(f"driver {driver!r}: unprepare failed: {errors}")

    # -- step 3: CRI ------------------------------------------------------------------------
    def sandbox_config(self, pod: Mapping[str, Any]) -> Any:
        pb = self.cri.pb
        m = pod["metadata"]
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(
                name=m["name"], namespace=m["namespace"], uid=m["uid"], attempt=0
            ),
            # No hostname: like the kubelet for hostNetwork pods (the UTS namespace is the host's).
            log_directory=str(self.rig.state_dir / "pods" / m["uid"]),
            labels={
                "io.kubernetes.pod.name": m["name"],
                "io.kubernetes.pod.namespace": m["namespace"],
                "io.kubernetes.pod.uid": m["uid"],
            },
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"/{self.rig.cgroup_parent}/pod{m['uid']}",
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(network=pb.NODE)
                ),
            ),
        )

    def container_config(
        self, pod: Mapping[str, Any], spec: Mapping[str, Any], cdi_ids: Sequence[str]
    ) -> Any:
        pb = self.cri.pb
        res = spec.get("resources", {})
        req, lim = res.get("requests", {}), res.get("limits", {})
        linux_res = pb.LinuxContainerResources()
        cpu_req = req.get("cpu") or lim.get("cpu")
        # The kubelet's formulas: shares from requests (min 2), CFS quota from limits.
        linux_res.cpu_shares = max(2, _quantity_millicpu(cpu_req) * 1024 // 1000) if cpu_req else 2
        if "cpu" in lim:
            linux_res.cpu_period = 100000
            linux_res.cpu_quota = _quantity_millicpu(lim["cpu"]) * 100000 // 1000
        if "memory" in lim:
            linux_res.memory_limit_in_bytes = _quantity_bytes(lim["memory"])
        envs = [
            pb.KeyValue(key=e["name"], value=e.get("value", "").encode())
            for e in spec.get("env", [])
            if "valueFrom" not in e
        ]
        image = spec.get("image") or self.rig.busybox_image
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=spec["name"], attempt=0),
            image=pb.ImageSpec(image=image),
            command=list(spec.get("command", [])),
            args=list(spec.get("args", [])),
            envs=envs,
            labels={
                "io.kubernetes.container.name": spec["name"],
                "io.kubernetes.pod.name": pod["metadata"]["name"],
                "io.kubernetes.pod.namespace": pod["metadata"]["namespace"],
                "io.kubernetes.pod.uid": pod["metadata"]["uid"],
            },
            log_path=f"{spec['name']}/0.log",
            CDI_devices=[pb.CDIDevice(name=i) for i in cdi_ids],
            linux=pb.LinuxContainerConfig(resources=linux_res),
        )

    def run_pod(
        self, namespace: str, name: str, cpusets: Mapping[str, str] | None = None
    ) -> RunningPod:
        """Start a pod already bound to the rig's Node (steps 1-3); undo all on failure.

        ``cpusets`` (container name -> cpu list) plays the kubelet's static CPU manager.
        """
        pod = _get(self.kube, f"/api/v1/namespaces/{namespace}/pods/{name}")
        node = pod["spec"].get("nodeName")
        if node != self.rig.node_name:
            raise NodeAgentError(
                f"pod {namespace}/{name}: bound to {node!r}, not {self.rig.node_name!r}"
            )
        claims = self.pod_claims(pod)
        cdi, prepared = self.prepare(claims)
        running = RunningPod(namespace, name, pod["metadata"]["uid"], "", prepared=prepared)
        try:
            ids_by_container: dict[str, list[str]] = {}
            for spec in pod["spec"]["containers"]:
                ids: list[str] = []
                for use in spec.get("resources", {}).get("claims", []):
                    claim = claims[use["name"]]
                    per_req = cdi.get(claim["metadata"]["uid"], {})
                    wanted = use.get("request")
                    for rn, dev_ids in per_req.items():
                        if wanted is None or rn in ("", wanted) or rn.startswith(f"{wanted}/"):
                            ids.extend(i for i in dev_ids if i not in ids)
                ids_by_container[spec["name"]] = ids
            self.start_cri_pod(pod, ids_by_container, cpusets or {}, running)
        except BaseException:
            self.stop_pod(running)
            raise
        return running

    def start_cri_pod(
        self,
        pod: Mapping[str, Any],
        cdi_by_container: Mapping[str, Sequence[str]],
        cpusets: Mapping[str, str] | None = None,
        running: RunningPod | None = None,
    ) -> RunningPod:
        """The CRI half of :meth:`run_pod`: sandbox, then each container created and started.

        Usable on its own with a pod-shaped dict (``metadata`` name/namespace/uid and
        ``spec.containers``) for CRI-only tests; on failure the caller owns the partial
        ``running`` (pass it to :meth:`stop_pod`).
        """
        m = pod["metadata"]
        if running is None:
            running = RunningPod(m["namespace"], m["name"], m["uid"], "")
        pb = self.cri.pb
        sb_config = self.sandbox_config(pod)
        running.sandbox_id = self.cri.runtime.RunPodSandbox(
            pb.RunPodSandboxRequest(config=sb_config), timeout=60
        ).pod_sandbox_id
        for spec in pod["spec"]["containers"]:
            ids = list(cdi_by_container.get(spec["name"], ()))
            running.cdi_devices[spec["name"]] = ids
            config = self.container_config(pod, spec, ids)
            if cpusets and spec["name"] in cpusets:
                config.linux.resources.cpuset_cpus = cpusets[spec["name"]]
            cid = self.cri.runtime.CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=running.sandbox_id, config=config, sandbox_config=sb_config
                ),
                timeout=60,
            ).container_id
            running.containers[spec["name"]] = cid
            self.cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
        return running

    # -- step 4: report ---------------------------------------------------------------------
    def report(self, running: RunningPod) -> dict[str, ContainerReport]:
        out = {}
        for name, cid in running.containers.items():
            pid = self.cri.container_pid(cid)
            # StartContainer can return while runc's init is still exec'ing the entrypoint
            # (its environ is empty until then); wait for the container's own process.
            wait_for(f"container {name} ({cid[:12]}) to exec", lambda pid=pid: _environ(pid), 10)
            out[name] = ContainerReport(
                name=name,
                container_id=cid,
                pid=pid,
                cpus_allowed_list=_proc_status_field(pid, "Cpus_allowed_list"),
                cgroup_cpuset=_cgroup_cpuset(pid),
                environ=_environ(pid),
            )
        return out

    # -- step 5: teardown -------------------------------------------------------------------
    def stop_pod(self, running: RunningPod) -> None:
        """Stop and remove containers and sandbox, then NodeUnprepareResources."""
        pb = self.cri.pb
        for cid in running.containers.values():
            self.cri.runtime.StopContainer(
                pb.StopContainerRequest(container_id=cid, timeout=5), timeout=30
            )
            self.cri.runtime.RemoveContainer(
                pb.RemoveContainerRequest(container_id=cid), timeout=30
            )
        running.containers.clear()
        if running.sandbox_id:
            self.cri.runtime.StopPodSandbox(
                pb.StopPodSandboxRequest(pod_sandbox_id=running.sandbox_id), timeout=30
            )
            self.cri.runtime.RemovePodSandbox(
                pb.RemovePodSandboxRequest(pod_sandbox_id=running.sandbox_id), timeout=30
            )
            running.sandbox_id = ""
        if running.prepared:
            self.unprepare(running.prepared)
            running.prepared = {}


def wait_for(what: str, check: Any, timeout: float = 30.0, interval: float = 0.25) -> Any:
    """Poll ``check()`` until it returns a truthy value; raise naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise NodeAgentError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
