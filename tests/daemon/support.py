"""Helpers for daemon tests: a synthetic node, claim objects, grpcio as the kubelet."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import trio

from dracpu.daemon.config import RunConfig
from tests.kube.fake_apiserver import FakeApiServer
from tests.support.grpcio_protos import load_grpc_modules
from tests.support.sysfs_tree import SysfsSpec, write_tree

PROTOS = Path(__file__).resolve().parents[2] / "protos"
APIS = "k8s.io/kubelet/pkg/apis"
NODE = "node-a"
TIMEOUT = 20.0

# 2 sockets x 1 NUMA node x 4 cores x 2 threads = 16 CPUs; NUMA 0 = 0-3,8-11, NUMA 1 = 4-7,12-15.
MACHINE = SysfsSpec(sockets=2, numa_per_socket=1, cores_per_numa=4, threads=2)


@dataclass(frozen=True)
class GrpcioApi:
    pb2: ModuleType
    grpc: ModuleType


def dra_api(version: str = "v1") -> GrpcioApi:
    pb2, pb2_grpc = load_grpc_modules(PROTOS, f"{APIS}/dra/{version}/api.proto")
    return GrpcioApi(pb2, pb2_grpc)


def registration_api() -> GrpcioApi:
    """grpcio's modules of the kubelet's plugin registration API (the kubelet's side)."""
    pb2, pb2_grpc = load_grpc_modules(PROTOS, f"{APIS}/pluginregistration/v1/api.proto")
    return GrpcioApi(pb2, pb2_grpc)


async def notify_registration(socket: Path, registered: bool, error: str = "") -> None:
    """Tell the plugin behind registration ``socket`` the kubelet's verdict, as the kubelet
    does (grpcio; a rejection's error reply is expected and ignored)."""
    api = registration_api()

    def call() -> None:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            stub = api.grpc.RegistrationStub(channel)
            status = api.pb2.RegistrationStatus(plugin_registered=registered, error=error)
            try:
                stub.NotifyRegistrationStatus(status, timeout=10)
            except grpc.RpcError:
                if registered:
                    raise

    await trio.to_thread.run_sync(call)


@contextmanager
def short_dir(prefix: str) -> Iterator[Path]:
    """A temp dir under /tmp (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_machine(base: Path) -> Path:
    return write_tree(base, MACHINE)


def run_config(root: Path, **overrides: Any) -> RunConfig:
    """``dracpu run``'s configuration for a node under ``root``: its sysfs, kubelet, CDI and
    state dirs and its kubeconfig there; ``overrides`` set any other field."""
    return RunConfig(
        sysfs_root=root / "sys",
        kubelet_root_dir=root / "kubelet",
        cdi_dir=root / "cdi",
        state_dir=root / "state",
        kubeconfig=str(root / "kubeconfig"),
        **overrides,
    )


def claim(
    uid: str,
    results: list[dict[str, Any]],
    *,
    name: str | None = None,
    namespace: str = "ns",
    config: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A resource.k8s.io/v1 ResourceClaim allocated on NODE."""
    devices: dict[str, Any] = {"results": results}
    if config is not None:
        devices["config"] = config
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name or f"claim-{uid}", "namespace": namespace, "uid": uid},
        "spec": {"devices": {"requests": [{"name": r["request"]} for r in results]}},
        "status": {
            "allocation": {
                "devices": devices,
                "nodeSelector": {
                    "nodeSelectorTerms": [
                        {
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": [NODE]}
                            ]
                        }
                    ]
                },
            }
        },
    }


def grouped(request: str, device: str, cpus: str | int) -> dict[str, Any]:
    return {
        "request": request,
        "driver": "dra.cpu",
        "pool": NODE,
        "device": device,
        "consumedCapacity": {"dra.cpu/cpu": str(cpus)},
    }


def individual(request: str, device: str) -> dict[str, Any]:
    return {"request": request, "driver": "dra.cpu", "pool": NODE, "device": device}


def opaque(requests: list[str], cpu_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": "FromClaim",
        "requests": requests,
        "opaque": {
            "driver": "dra.cpu",
            "parameters": {"apiVersion": "v1alpha1", "cpuConfig": cpu_config},
        },
    }


async def kubelet_call(
    socket: Path, api: GrpcioApi, op: str, claims: list[tuple[str, str, str]]
) -> Any:
    """Call NodePrepareResources / NodeUnprepareResources from a grpcio client thread."""

    def call() -> Any:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            stub = api.grpc.DRAPluginStub(channel)
            pb_claims = [api.pb2.Claim(namespace=ns, name=n, uid=u) for ns, n, u in claims]
            if op == "prepare":
                request = api.pb2.NodePrepareResourcesRequest(claims=pb_claims)
                return stub.NodePrepareResources(request, timeout=TIMEOUT)
            request = api.pb2.NodeUnprepareResourcesRequest(claims=pb_claims)
            return stub.NodeUnprepareResources(request, timeout=TIMEOUT)

    return await trio.to_thread.run_sync(call)


KERNEL_UEVENT = Path("/sys/devices/system/cpu/cpu0/uevent")
"""Writing ``change`` here makes the kernel emit a real CPU uevent (root)."""


def kernel_uevent() -> None:
    KERNEL_UEVENT.write_text("change\n")


def set_online(root: Path, cpulist: str, *, cpu: int, online: bool) -> None:
    """Change the overlay: the global online list and the CPU's own ``online`` file."""
    base = root / "sys" / "devices" / "system" / "cpu"
    (base / "online").write_text(cpulist + "\n")
    (base / f"cpu{cpu}" / "online").write_text("1\n" if online else "0\n")


def slice_cpus(fake: FakeApiServer, device: str) -> int:
    """The ``dra.cpu/cpu`` capacity of the published grouped ``device``."""
    for obj in fake.objects.get("resourceslices", {}).values():
        for d in obj["spec"].get("devices", []):
            if d["name"] == device:
                return int(d["capacity"]["dra.cpu/cpu"]["value"])
    raise AssertionError(f"{device} not published")
