"""Benchmark: how long the real kube-scheduler takes to place a pod whose claim asks dracpu for
CPUs, in individual and grouped device mode, on 1 and on 20 synthetic 512-CPU nodes.

Starts its OWN control plane (the rig's v1.37 binaries, not the rig): etcd, kube-apiserver and
kube-scheduler in a temp dir, on their own ports (etcd 22379/22380, apiserver 26443, scheduler
20259), with the DRA feature gates the rig uses, and stops it at the end, on failure and on
Ctrl-C. No controller-manager and no kubelet: the Nodes are plain objects (Ready, with
allocatable), pods are only bound, never run, and the bench removes claims itself.

Every node gets the ResourceSlices dracpu publishes for a 2-socket, 4-NUMA hybrid machine (384
P-core + 128 E-core CPUs; ``tests/support/synthetic_node.py``: a sysfs tree read by dracpu's
reader, sliced by dracpu's slice model). Per configuration {individual, grouped} x {1, N nodes},
``--pods`` pods are created one after another for each claim kind, and the time from the pod's
POST to the watch event with ``spec.nodeName`` set is taken (the scheduler writes the claim's
allocation before it binds; each allocation is then checked against the claim):

* floor: a pod without a claim on the same cluster;
* plain: 16 CPUs (individual: ``count: 16``; grouped: ``capacity dra.cpu/cpu: 16``);
* cel: individual: 16 devices with ``coreType == "p-core"`` and ``matchAttribute`` on
  ``dra.cpu/numaNodeID`` (same NUMA node); grouped has no per-core attributes, so the closest
  claim is 16 CPUs of a NUMA-node device picked by CEL on ``socketID == 1``.

Claims of one kind stay allocated while the rest of that batch is placed (the node fills up),
and are removed before the next batch. ``sched ms`` is the scheduler's own
``scheduler_scheduling_attempt_duration_seconds`` mean for the batch (algorithm + plugins,
without the API round trips).

Then, per mode, a fragmented node: NUMA nodes 0-2 filled until only ``--frag-free`` P-core CPUs
(grouped: CPUs) are free on each, NUMA node 3 empty; the CEL claim is scheduled (it fits only on
node 3) and, 0.5 s later, a pod without a claim: whether the first is bound or reported
unschedulable and how long it took, and how long the second waited.

    python bench/bench_sched_scale.py [--pods 10] [--nodes 1,20] [--cpus 16] [--frag-free 8,12,15]
        [--keep-dir]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dracpu.core.names import DRIVER_NAME  # noqa: E402
from dracpu.core.slice_plan import plan_slices  # noqa: E402
from dracpu.core.slices import DeviceMode  # noqa: E402
from dracpu.core.topology import Topology  # noqa: E402
from dracpu.kube.client import KubeClient  # noqa: E402
from dracpu.kube.config import KubeConfig  # noqa: E402
from dracpu.kube.errors import NotFoundError  # noqa: E402
from dracpu.kube.resources import (  # noqa: E402
    DEVICE_CLASSES,
    NODES,
    PODS,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
    Resource,
)
from tests.e2e.rig import apiserver_argv, current  # noqa: E402
from tests.support.synthetic_node import (  # noqa: E402
    device_attributes,
    node_slice_specs,
    synthetic_topology,
)

SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount", True)
NAMESPACE = "default"
DRA_GATES = (
    "DRAConsumableCapacity",
    "DRAPartitionableDevices",
    "DRAResourceClaimDeviceStatus",
    "DRAListTypeAttributes",
    "DRANodeAllocatableResources",
    "DRADeviceTaints",
)
RIG_PORTS = {12379, 12380, 16443, 10259, 10257, 10250, 10248}
BIND_TIMEOUT_S = 120.0


# ------------------------------------------------------------------ the private control plane


@dataclass(frozen=True)
class Ports:
    etcd: int = 22379
    etcd_peer: int = 22380
    apiserver: int = 26443
    scheduler: int = 20259


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def known_gates(binary: Path, gates: Sequence[str]) -> dict[str, bool]:
    """The gates of ``gates`` that ``binary --help`` lists (as hack/rig/up.sh picks them)."""
    text = subprocess.run(
        [str(binary), "--help"], capture_output=True, text=True, check=False
    ).stdout
    return {g: True for g in gates if re.search(rf"(^| |kube:){g}=true\|false", text, re.M)}


class ControlPlane:
    """etcd + kube-apiserver + kube-scheduler in one temp dir; ``stop`` ends what it started."""

    def __init__(self, root: Path, ports: Ports) -> None:
        rig = current()
        self.bin_dir = rig.bin_dir
        self.root = root
        self.ports = ports
        self.pki = root / "pki"
        self.logs = root / "logs"
        self.kubeconfig = root / "admin.kubeconfig"
        # The rig's own argv helper, pointed at this dir and these ports.
        self.rig = dataclasses.replace(
            rig, state_dir=root, apiserver_port=ports.apiserver, etcd_client_port=ports.etcd
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.gates: dict[str, bool] = {}

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    def start(self) -> None:
        for name in ("etcd", "kube-apiserver", "kube-scheduler"):
            if not (self.bin_dir / name).is_file():
                raise SystemExit(
                    f"bench_sched_scale: {self.bin_dir / name} missing (just rig-build)"
                )
        for port in dataclasses.astuple(self.ports):
            if port in RIG_PORTS:
                raise SystemExit(f"bench_sched_scale: port {port} belongs to the rig; pick another")
            if port_in_use(port):
                raise SystemExit(f"bench_sched_scale: port 127.0.0.1:{port} is already in use")
        self.logs.mkdir(parents=True)
        t0 = time.monotonic()
        self._pki()
        self.gates = known_gates(self.bin_dir / "kube-apiserver", DRA_GATES)
        gate_arg = ",".join(f"{g}=true" for g in self.gates)
        p = self.ports
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=sched-scale",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{p.etcd}",
                f"--advertise-client-urls=http://127.0.0.1:{p.etcd}",
                f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                f"--initial-cluster=sched-scale=http://127.0.0.1:{p.etcd_peer}",
                "--log-level=warn",
                "--quota-backend-bytes=2147483648",
                "--unsafe-no-fsync",
            ],
        )
        self._wait("etcd", 30, lambda: _http_ok(f"http://127.0.0.1:{p.etcd}/health"))
        self._spawn(
            "kube-apiserver",
            apiserver_argv(
                self.rig,
                secure_port=p.apiserver,
                etcd_prefix="/registry-sched-scale",
                feature_gates=self.gates,
            ),
        )
        self._wait("kube-apiserver", 120, lambda: self._https_ok(self.url + "/readyz"))
        kc = str(self.kubeconfig)
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p.scheduler}",
                "--leader-elect=false",
                *([f"--feature-gates={gate_arg}"] if gate_arg else []),
            ],
        )
        self._wait("kube-scheduler", 60, lambda: self._https_ok(self.scheduler_url + "/healthz"))
        print(
            f"control plane up in {time.monotonic() - t0:.1f}s ({self.root}; gates: "
            f"{gate_arg or 'none'})",
            flush=True,
        )

    @property
    def scheduler_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.scheduler}"

    def stop(self) -> None:
        """SIGTERM each process (scheduler, apiserver, etcd), SIGKILL after 5 s."""
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def kube_config(self) -> KubeConfig:
        return KubeConfig(
            server=self.url,
            origin=f"bench_sched_scale control plane in {self.root}",
            ca_file=str(self.pki / "ca.crt"),
            client_cert_file=str(self.pki / "admin.crt"),
            client_key_file=str(self.pki / "admin.key"),
        )

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def scheduler_metrics(self) -> str:
        """The scheduler's /metrics text (its own serving cert is self-signed: not verified)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        with urllib.request.urlopen(self.scheduler_url + "/metrics", context=ctx, timeout=10) as r:
            return str(r.read().decode())

    # --- helpers --------------------------------------------------------------------------

    def _https_ok(self, url: str) -> bool:
        ctx = self.ssl_context()
        if "/healthz" in url and str(self.ports.scheduler) in url:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return _http_ok(url, ctx)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the child)
        self.procs[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def _wait(self, name: str, timeout: float, ready: Any) -> None:
        deadline = time.monotonic() + timeout
        proc = self.procs[name]
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                why = "exited" if proc.poll() is not None else f"not ready after {timeout:.0f}s"
                tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-30:]
                raise SystemExit(f"bench_sched_scale: {name} {why}\n" + "\n".join(tail))
            time.sleep(0.3)

    def _pki(self) -> None:
        """A CA, the apiserver's serving cert (127.0.0.1), an admin client cert
        (system:masters), the service-account key pair, and the admin kubeconfig."""
        self.pki.mkdir(mode=0o700)
        d = self.pki

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

        openssl("genrsa", "-out", "ca.key", "2048")
        openssl(
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=dracpu-sched-scale-ca",
            "-days",
            "2",
            "-sha256",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-out",
            "ca.crt",
        )
        for name, subj, ext in (
            (
                "apiserver",
                "/CN=kube-apiserver",
                "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost",
            ),
            ("admin", "/O=system:masters/CN=sched-scale-admin", "extendedKeyUsage=clientAuth"),
        ):
            openssl("genrsa", "-out", f"{name}.key", "2048")
            openssl("req", "-new", "-key", f"{name}.key", "-subj", subj, "-out", f"{name}.csr")
            (d / f"{name}.ext").write_text(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                f"{ext}\n"
            )
            openssl(
                "x509",
                "-req",
                "-in",
                f"{name}.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-sha256",
                "-extfile",
                f"{name}.ext",
                "-out",
                f"{name}.crt",
            )
        openssl("genrsa", "-out", "sa.key", "2048")
        openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")

        def b64(name: str) -> str:
            return base64.b64encode((d / name).read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "sched-scale",
                    "cluster": {"server": self.url, "certificate-authority-data": b64("ca.crt")},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64("admin.crt"),
                        "client-key-data": b64("admin.key"),
                    },
                }
            ],
            "contexts": [
                {"name": "sched-scale", "context": {"cluster": "sched-scale", "user": "admin"}}
            ],
            "current-context": "sched-scale",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)


def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=3) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def control_plane(ports: Ports, keep_dir: bool) -> Iterator[ControlPlane]:
    """Start the private control plane; stop it and remove its dir however the block ends
    (SIGTERM is KeyboardInterrupt here, and inside trio :func:`cancel_on_sigterm` handles it,
    so ``kill`` tears down too)."""
    root = Path(tempfile.mkdtemp(prefix="dracpu-sched-scale-"))
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    cp = ControlPlane(root, ports)
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()
        signal.signal(signal.SIGTERM, previous)
        if keep_dir:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ objects


def node_object(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"bench": "sched-scale", "kubernetes.io/hostname": name},
        },
    }


def node_status(node: Mapping[str, Any], cpus: int) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    resources = {"cpu": str(cpus), "memory": "1Ti", "pods": "250"}
    return {
        **node,
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "synthetic node (bench_sched_scale)",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        },
    }


def claim_spec(mode: DeviceMode, kind: str, cpus: int) -> dict[str, Any]:
    """The claim of one kind (``plain`` or ``cel``) for ``cpus`` CPUs in ``mode``."""
    exactly: dict[str, Any] = {"deviceClassName": DRIVER_NAME}
    constraints: list[dict[str, Any]] = []
    if mode is DeviceMode.INDIVIDUAL:
        exactly |= {"allocationMode": "ExactCount", "count": cpus}
        if kind == "cel":
            exactly["selectors"] = [
                {"cel": {"expression": f'device.attributes["{DRIVER_NAME}"].coreType == "p-core"'}}
            ]
            constraints = [{"requests": ["cpus"], "matchAttribute": f"{DRIVER_NAME}/numaNodeID"}]
    else:
        exactly["capacity"] = {"requests": {f"{DRIVER_NAME}/cpu": str(cpus)}}
        if kind == "cel":
            exactly["selectors"] = [
                {"cel": {"expression": f'device.attributes["{DRIVER_NAME}"].socketID == 1'}}
            ]
    devices: dict[str, Any] = {"requests": [{"name": "cpus", "exactly": exactly}]}
    if constraints:
        devices["constraints"] = constraints
    return {"devices": devices}


def fill_claim_spec(mode: DeviceMode, numa: int, cpus: int) -> dict[str, Any]:
    """A claim for ``cpus`` P-core CPUs (grouped: CPUs) of NUMA node ``numa``, to fill it."""
    attr = f'device.attributes["{DRIVER_NAME}"]'
    if mode is DeviceMode.INDIVIDUAL:
        exactly: dict[str, Any] = {
            "allocationMode": "ExactCount",
            "count": cpus,
            "selectors": [
                {
                    "cel": {
                        "expression": f'{attr}.coreType == "p-core" && {attr}.numaNodeID == {numa}'
                    }
                }
            ],
        }
    else:
        exactly = {
            "capacity": {"requests": {f"{DRIVER_NAME}/cpu": str(cpus)}},
            "selectors": [{"cel": {"expression": f"{attr}.numaNodeID == {numa}"}}],
        }
    return {
        "devices": {
            "requests": [{"name": "cpus", "exactly": {"deviceClassName": DRIVER_NAME, **exactly}}]
        }
    }


def pod_object(name: str, claim: str | None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c", "image": "pause:never-pulled"}
    spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": 0}
    if claim:
        container["resources"] = {"claims": [{"name": "cpus"}]}
        spec["resourceClaims"] = [{"name": "cpus", "resourceClaimName": claim}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "sched-scale"}},
        "spec": spec,
    }


# ------------------------------------------------------------------ measuring


@dataclass
class Row:
    mode: str
    nodes: int
    claim: str
    latencies_ms: list[float] = field(default_factory=list)
    sched_ms: float | None = None
    slices_per_node: int = 0
    kib_per_node: float = 0.0
    failures: list[str] = field(default_factory=list)


@dataclass
class FragRow:
    mode: str
    free: int
    cpus: int
    outcome: str = ""
    seconds: float | None = None
    other_seconds: float | None = None
    """Bind time of a claim-less pod created 0.5 s after the probe."""


class BindWatch:
    """Watches the namespace's pods; records when each one first shows ``spec.nodeName``."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self.bound: dict[str, tuple[float, str]] = {}
        self.unschedulable: dict[str, tuple[float, str]] = {}
        """Pod → when the scheduler first marked it unschedulable, and its message."""
        self.changed = trio.Event()

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled (cancellation closes the stream)."""
        listed = await self.client.list(PODS, namespace=NAMESPACE)
        rv = listed.resource_version
        started = False
        while True:
            async with self.client.watch(PODS, namespace=NAMESPACE, resource_version=rv) as events:
                if not started:
                    started = True
                    task_status.started()
                async for event in events:
                    rv = event.resource_version or rv
                    pod = event.object
                    node = pod.get("spec", {}).get("nodeName")
                    name = pod.get("metadata", {}).get("name", "")
                    if event.type == "DELETED":
                        continue
                    if node and name not in self.bound:
                        self.bound[name] = (time.perf_counter(), node)
                    for cond in pod.get("status", {}).get("conditions") or []:
                        failed = (
                            cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                        )
                        if failed and name not in self.unschedulable:
                            message = str(cond.get("message", ""))
                            self.unschedulable[name] = (time.perf_counter(), message)
                    self.changed.set()
                    self.changed = trio.Event()

    async def wait_settled(self, name: str) -> None:
        """Until ``name`` is bound or marked unschedulable. Cancellation: nothing to undo."""
        while name not in self.bound and name not in self.unschedulable:
            await self.changed.wait()

    async def wait_bound(self, name: str) -> tuple[float, str]:
        """When and where ``name`` was bound; the caller bounds the wait. Cancellation:
        nothing to undo."""
        while name not in self.bound:
            await self.changed.wait()
        return self.bound[name]


def attempt_totals(metrics: str) -> tuple[float, float]:
    """(sum seconds, count) of the scheduler's scheduled attempts."""
    total = count = 0.0
    for family in text_string_to_metric_families(metrics):
        if family.name != "scheduler_scheduling_attempt_duration_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("result") != "scheduled":
                continue
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return total, count


class Bench:
    def __init__(
        self, cp: ControlPlane, client: KubeClient, topology: Topology, args: argparse.Namespace
    ) -> None:
        self.cp = cp
        self.client = client
        self.topology = topology
        self.args = args
        self.watch = BindWatch(client)
        self.serial = 0

    async def setup(self) -> None:
        docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "dracpu.yaml").read_text()) if d]
        device_class = next(d for d in docs if d.get("kind") == "DeviceClass")
        await self.client.create(DEVICE_CLASSES, device_class)
        # The ServiceAccount admission plugin wants "default" (no controller-manager makes it).
        with contextlib.suppress(Exception):
            await self.client.create(
                SERVICE_ACCOUNTS,
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}},
                namespace=NAMESPACE,
            )

    async def add_nodes(self, mode: DeviceMode, count: int) -> tuple[list[str], int, int]:
        """Create ``count`` Ready nodes with dracpu's slices; returns names, slices and bytes
        per node."""
        names = [f"ss-{mode.value[:4]}-{count:02d}-{i:02d}" for i in range(count)]
        slices = size = 0
        for name in names:
            node = await self.client.create(NODES, node_object(name))
            node = await self.client.update_status(NODES, node_status(node, self.topology.num_cpus))
            # Admission (TaintNodesByCondition) adds the not-ready taint to every new Node; the
            # controller-manager would lift it once Ready: lift it here.
            await self.client.patch(NODES, name, {"spec": {"taints": None}})
            specs = node_slice_specs(self.topology, name, mode)
            plan = plan_slices(
                specs, [], driver=DRIVER_NAME, node=name, owner_uid=node["metadata"]["uid"]
            )
            slices = len(plan.creates)
            size = 0
            for write in plan.creates:
                stored = await self.client.create(RESOURCE_SLICES, write.body)
                stored["metadata"].pop("managedFields", None)
                size += len(json.dumps(stored, separators=(",", ":")))
        want = slices * count
        with trio.fail_after(60):
            while len((await self.client.list(RESOURCE_SLICES)).items) < want:  # noqa: ASYNC110
                await trio.sleep(0.2)
        await trio.sleep(2)  # the scheduler's informers see the new slices
        return names, slices, size

    async def remove_nodes(self, names: list[str]) -> None:
        for name in names:
            await self.client.delete_collection(
                RESOURCE_SLICES, field_selector=f"spec.nodeName={name}"
            )
            await self.client.delete(NODES, name)

    async def clear_batch(self) -> None:
        """Delete this batch's pods (at once: no kubelet) and claims (dropping the scheduler's
        delete-protection finalizer, which the controller-manager would remove)."""
        await self.client.request(
            "DELETE",
            PODS.path(namespace=NAMESPACE),
            params={"labelSelector": "bench=sched-scale", "gracePeriodSeconds": "0"},
        )
        claims = await self.client.list(RESOURCE_CLAIMS, namespace=NAMESPACE)
        for claim in claims.items:
            name = claim["metadata"]["name"]
            with contextlib.suppress(NotFoundError):
                await self.client.delete(RESOURCE_CLAIMS, name, namespace=NAMESPACE)
                await self.client.patch(
                    RESOURCE_CLAIMS, name, {"metadata": {"finalizers": None}}, namespace=NAMESPACE
                )
        with trio.fail_after(60):
            while await self.leftovers():  # noqa: ASYNC110 (polling the API server)
                await trio.sleep(0.2)
        await trio.sleep(1)  # the scheduler sees the devices free again

    async def claim_and_pod(self, name: str, spec: dict[str, Any]) -> float:
        """Create claim ``name`` and a pod using it; returns the time of the pod's POST."""
        await self.client.create(
            RESOURCE_CLAIMS,
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaim",
                "metadata": {"name": name},
                "spec": spec,
            },
            namespace=NAMESPACE,
        )
        t0 = time.perf_counter()
        await self.client.create(PODS, pod_object(name, name), namespace=NAMESPACE)
        return t0

    async def fragmented(self, mode: DeviceMode, free: int, cpus: int) -> FragRow:
        """One node whose NUMA nodes 0-2 keep only ``free`` P-core CPUs (grouped: CPUs) free,
        NUMA node 3 untouched; then the CEL claim for ``cpus`` CPUs (it fits only on node 3)."""
        row = FragRow(mode.value, free, cpus)
        names, _, _ = await self.add_nodes(mode, 1)
        per_numa = 96 if mode is DeviceMode.INDIVIDUAL else 128
        largest = 32 if mode is DeviceMode.INDIVIDUAL else per_numa  # 32: results per claim
        try:
            for numa in range(3):
                rest = per_numa - free
                while rest:
                    take = min(largest, rest)
                    rest -= take
                    self.serial += 1
                    name = f"f{self.serial:04d}"
                    await self.claim_and_pod(name, fill_claim_spec(mode, numa, take))
                    with trio.fail_after(BIND_TIMEOUT_S):
                        await self.watch.wait_bound(name)
            self.serial += 1
            probe = f"probe{self.serial:04d}"
            t0 = await self.claim_and_pod(probe, claim_spec(mode, "cel", cpus))
            # A pod without a claim, 0.5 s later: does it wait for the probe's search?
            await trio.sleep(0.5)
            other = f"{probe}-other"
            t_other = time.perf_counter()
            await self.client.create(PODS, pod_object(other, None), namespace=NAMESPACE)
            with trio.move_on_after(BIND_TIMEOUT_S):
                await self.watch.wait_bound(other)
                row.other_seconds = self.watch.bound[other][0] - t_other
            with trio.move_on_after(BIND_TIMEOUT_S):
                await self.watch.wait_settled(probe)
            if probe in self.watch.bound:
                row.seconds = self.watch.bound[probe][0] - t0
                row.outcome = f"bound on {self.watch.bound[probe][1]}"
            elif probe in self.watch.unschedulable:
                at, message = self.watch.unschedulable[probe]
                row.seconds = at - t0
                row.outcome = "unschedulable: " + message.split(": ")[-1]
            else:
                row.outcome = f"nothing after {BIND_TIMEOUT_S:.0f}s"
        finally:
            await self.clear_batch()
            await self.remove_nodes(names)
        return row

    async def leftovers(self) -> int:
        """Claims and pods still in the namespace."""
        claims = await self.client.list(RESOURCE_CLAIMS, namespace=NAMESPACE)
        pods = await self.client.list(PODS, namespace=NAMESPACE)
        return len(claims.items) + len(pods.items)

    async def batch(self, row: Row, mode: DeviceMode, attrs: dict[str, dict[str, Any]]) -> None:
        before = attempt_totals(self.cp.scheduler_metrics())
        claims: dict[str, str] = {}
        for _ in range(self.args.pods):
            self.serial += 1
            pod = f"p{self.serial:04d}-{row.claim}"
            claim_name = None
            if row.claim != "floor":
                claim_name = f"c{self.serial:04d}"
                await self.client.create(
                    RESOURCE_CLAIMS,
                    {
                        "apiVersion": "resource.k8s.io/v1",
                        "kind": "ResourceClaim",
                        "metadata": {"name": claim_name},
                        "spec": claim_spec(mode, row.claim, self.args.cpus),
                    },
                    namespace=NAMESPACE,
                )
                claims[pod] = claim_name
            t0 = time.perf_counter()
            await self.client.create(PODS, pod_object(pod, claim_name), namespace=NAMESPACE)
            bound = None
            with trio.move_on_after(BIND_TIMEOUT_S):
                bound = await self.watch.wait_bound(pod)
            if bound is None:
                row.failures.append(f"{pod}: not bound after {BIND_TIMEOUT_S:.0f}s")
                break
            row.latencies_ms.append((bound[0] - t0) * 1000)
        after = attempt_totals(self.cp.scheduler_metrics())
        if after[1] > before[1]:
            row.sched_ms = (after[0] - before[0]) / (after[1] - before[1]) * 1000
        await self.check_allocations(row, mode, claims, attrs)
        await self.clear_batch()

    async def check_allocations(
        self,
        row: Row,
        mode: DeviceMode,
        claims: dict[str, str],
        attrs: dict[str, dict[str, Any]],
    ) -> None:
        """Every bound pod's claim is allocated on the pod's node as the claim asked; no
        individual device is given twice, no grouped device beyond its capacity."""
        used: dict[tuple[str, str], int] = {}
        for pod, claim_name in claims.items():
            if pod not in self.watch.bound:
                continue
            node = self.watch.bound[pod][1]
            claim = await self.client.get(RESOURCE_CLAIMS, claim_name, namespace=NAMESPACE)
            results = (
                (claim.get("status", {}).get("allocation") or {})
                .get("devices", {})
                .get("results", [])
            )
            problem = _check_results(mode, row.claim, self.args.cpus, node, results, attrs, used)
            if problem:
                row.failures.append(f"{claim_name}: {problem}")
        for (_, device), n in used.items():
            cap = attrs[device].get(f"{DRIVER_NAME}/numCPUs", 1)
            if n > cap:
                row.failures.append(f"{device}: {n} CPUs given out of {cap}")


def _check_results(
    mode: DeviceMode,
    kind: str,
    cpus: int,
    node: str,
    results: list[dict[str, Any]],
    attrs: dict[str, dict[str, Any]],
    used: dict[tuple[str, str], int],
) -> str | None:
    if not results:
        return "not allocated"
    if any(r.get("pool") != node or r.get("driver") != DRIVER_NAME for r in results):
        return f"allocated from another pool than the pod's node {node}"
    names = [r["device"] for r in results]
    if mode is DeviceMode.INDIVIDUAL:
        if len(set(names)) != cpus:
            return f"{len(set(names))} devices, want {cpus}"
        if kind == "cel":
            types = {attrs[n][f"{DRIVER_NAME}/coreType"] for n in names}
            numas = {attrs[n][f"{DRIVER_NAME}/numaNodeID"] for n in names}
            if types != {"p-core"} or len(numas) != 1:
                return f"core types {sorted(types)}, NUMA nodes {sorted(numas)}"
        for n in names:
            used[(node, n)] = used.get((node, n), 0) + 1
        return None
    if len(names) != 1:
        return f"{len(names)} devices, want 1 NUMA-node device"
    consumed = results[0].get("consumedCapacity", {}).get(f"{DRIVER_NAME}/cpu")
    if consumed != str(cpus):
        return f"consumed {consumed!r} CPUs, want {cpus}"
    if kind == "cel" and attrs[names[0]][f"{DRIVER_NAME}/socketID"] != 1:
        return f"{names[0]} is not on socket 1"
    used[(node, names[0])] = used.get((node, names[0]), 0) + cpus
    return None


async def run(cp: ControlPlane, args: argparse.Namespace) -> tuple[list[Row], list[FragRow]]:
    t0 = time.monotonic()
    topology = synthetic_topology()
    print(
        f"synthetic node: {topology.num_cpus} CPUs, {len(topology.numas)} NUMA nodes, hybrid="
        f"{topology.is_hybrid} (read back in {time.monotonic() - t0:.1f}s)",
        flush=True,
    )
    rows: list[Row] = []
    frags: list[FragRow] = []
    async with KubeClient(cp.kube_config()) as client:
        bench = Bench(cp, client, topology, args)
        await bench.setup()
        stopped: list[int] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(bench.watch.run)
            nursery.start_soon(cancel_on_sigterm, nursery.cancel_scope, stopped)
            for mode in (DeviceMode.INDIVIDUAL, DeviceMode.GROUPED):
                attrs = device_attributes(node_slice_specs(topology, "n", mode))
                for count in args.nodes:
                    names, slices, size = await bench.add_nodes(mode, count)
                    for kind in ("floor", "plain", "cel"):
                        row = Row(mode.value, count, kind, slices_per_node=slices)
                        row.kib_per_node = size / 1024
                        print(
                            f"  {mode.value:10} {count:3} nodes  {kind:5} ...", end="", flush=True
                        )
                        await bench.batch(row, mode, attrs)
                        print(f" {_fmt(row)}", flush=True)
                        rows.append(row)
                    await bench.remove_nodes(names)
            for mode in (DeviceMode.INDIVIDUAL, DeviceMode.GROUPED):
                for free in args.frag_free:
                    print(f"  fragmented {mode.value:10} {free:3} free ...", end="", flush=True)
                    frag = await bench.fragmented(mode, free, args.cpus)
                    print(f" {frag.outcome} ({frag.seconds or 0:.2f}s)", flush=True)
                    frags.append(frag)
            nursery.cancel_scope.cancel()
        if stopped:
            raise KeyboardInterrupt
    return rows, frags


async def cancel_on_sigterm(scope: trio.CancelScope, stopped: list[int]) -> None:
    """On SIGTERM, note it in ``stopped`` and cancel ``scope`` (the caller then stops like on
    Ctrl-C). Cancellation: stops listening."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for signum in signals:
            stopped.append(signum)
            scope.cancel()
            return


def _fmt(row: Row) -> str:
    if not row.latencies_ms:
        return "no pod bound"
    return (
        f"p50 {statistics.median(row.latencies_ms):7.1f} ms  max {max(row.latencies_ms):7.1f} ms"
        + (f"  ({len(row.failures)} failures)" if row.failures else "")
    )


def table(rows: list[Row], args: argparse.Namespace) -> str:
    claim_text = {
        "floor": "no claim (floor)",
        "plain": f"{args.cpus} CPUs",
        "cel": f"{args.cpus} CPUs, CEL",
    }
    head = (
        "| mode | nodes | claim | slices/node | KiB/node | pods | p50 ms | max ms | sched ms |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        p50 = f"{statistics.median(r.latencies_ms):.1f}" if r.latencies_ms else "-"
        mx = f"{max(r.latencies_ms):.1f}" if r.latencies_ms else "-"
        sched = f"{r.sched_ms:.1f}" if r.sched_ms is not None else "-"
        lines.append(
            f"| {r.mode} | {r.nodes} | {claim_text[r.claim]} | {r.slices_per_node} | "
            f"{r.kib_per_node:.0f} | {len(r.latencies_ms)}/{args.pods} | {p50} | {mx} | {sched} |"
        )
    return "\n".join(lines)


def frag_table(frags: list[FragRow]) -> str:
    lines = [
        "| mode | free on NUMA 0-2 | claim | outcome | time s | claim-less pod 0.5 s later: s |",
        "|---|---|---|---|---|---|",
    ]
    for f in frags:
        unit = "P-core CPUs" if f.mode == "individual" else "CPUs"
        secs = f"{f.seconds:.2f}" if f.seconds is not None else "-"
        other = f"{f.other_seconds:.2f}" if f.other_seconds is not None else "-"
        lines.append(
            f"| {f.mode} | {f.free} {unit} | {f.cpus} CPUs, CEL | {f.outcome} | {secs} | {other} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10, help="pods per configuration")
    parser.add_argument("--nodes", default="1,20", help="node counts, comma-separated")
    parser.add_argument("--cpus", type=int, default=16, help="CPUs per claim")
    parser.add_argument(
        "--frag-free",
        default="8,12,15",
        help="fragmented-node runs: P-core CPUs left free on NUMA nodes 0-2, comma-separated",
    )
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    args.nodes = [int(n) for n in args.nodes.split(",")]
    args.frag_free = [int(n) for n in args.frag_free.split(",") if n]
    try:
        with control_plane(Ports(), args.keep_dir) as cp:
            rows, frags = trio.run(run, cp, args)
    except BaseException as exc:
        # Ctrl-C inside trio arrives wrapped in an exception group.
        interrupted = isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None
        )
        if not interrupted:
            raise
        print("bench_sched_scale: interrupted; control plane stopped", file=sys.stderr)
        return 130
    print()
    print(table(rows, args))
    if frags:
        print()
        print(frag_table(frags))
    failures = [f"{r.mode}/{r.nodes}/{r.claim}: {f}" for r in rows for f in r.failures]
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
