"""The ``dra.memory`` driver in the daemon: grpcio as the kubelet on the memory plugin's own
sockets, the fake API server holding the claims; slices, CDI specs, the shared checkpoint, a
restart, and the flag being off by default."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dracpu.checkpoint import CheckpointStore
from dracpu.core.memory_prepare import memory_env
from dracpu.daemon.status import read_status, render_text
from dracpu.memory_cdi import MemoryCdiDir
from tests.daemon.support import (
    NODE,
    GrpcioApi,
    claim,
    dra_api,
    grouped,
    kubelet_call,
    notify_registration,
    short_dir,
    write_machine,
)
from tests.daemon.test_daemon import Running, cpus_of, start
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_http import write_kubeconfig
from tests.kube.waiting import wait_for

UID = "0f3c1b2a-7d4e-4c1b-9a53-1e2d3c4b5a69"
OTHER = "9a1b2c3d-0000-4000-8000-000000000001"
GIB_KIB = 1024 * 1024


@pytest.fixture(scope="module", params=["v1", "v1beta1"])
def api(request: pytest.FixtureRequest) -> GrpcioApi:
    return dra_api(request.param)


def write_hugepages(sys_root: Path, per_node: dict[int, int]) -> None:
    """2 MiB hugepage pools: ``per_node`` NUMA node -> pages (kernel and per-node files)."""
    (sys_root / "kernel" / "mm" / "hugepages" / "hugepages-2048kB").mkdir(parents=True)
    for numa, pages in per_node.items():
        d = sys_root / "devices" / "system" / "node" / f"node{numa}" / "hugepages"
        d = d / "hugepages-2048kB"
        d.mkdir(parents=True)
        (d / "nr_hugepages").write_text(f"{pages}\n")
        (d / "free_hugepages").write_text(f"{pages}\n")
        (d / "surplus_hugepages").write_text("0\n")


@pytest.fixture
async def env() -> AsyncIterator[tuple[Path, FakeApiServer]]:
    with short_dir("dm-") as root:
        write_hugepages(write_machine(root), {0: 64, 1: 32})
        write_kubeconfig(root / "kubeconfig", 1)
        fake = FakeApiServer()
        fake.put_object("nodes", {"metadata": {"name": NODE}})
        yield root, fake


def memory_result(request: str, device: str, size: str) -> dict[str, Any]:
    return {
        "request": request,
        "driver": "dra.memory",
        "pool": NODE,
        "device": device,
        "consumedCapacity": {"size": size},
    }


async def memory_call(r: Running, api: GrpcioApi, op: str, *uids: str) -> Any:
    assert r.daemon.memory is not None
    socket = r.daemon.memory.plugin_config.paths().dra_socket
    return await kubelet_call(socket, api, op, [("ns", f"claim-{u}", u) for u in uids])


def memory_slices(fake: FakeApiServer) -> list[dict[str, Any]]:
    return [
        s
        for s in fake.objects.get("resourceslices", {}).values()
        if s["spec"]["driver"] == "dra.memory"
    ]


async def test_memory_driver_prepare_unprepare(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    root, fake = env
    r = await start(nursery, root, fake, memory_driver=True)
    assert r.daemon.memory is not None
    paths = r.daemon.memory.plugin_config.paths()
    assert paths.registration_socket.name == "dra.memory-reg.sock"
    assert paths.dra_socket.parent == root / "kubelet" / "plugins" / "dra.memory"
    await wait_for(paths.registration_socket.exists, 10)
    # Its own slices, pool = node name, stable device names.
    await wait_for(lambda: len(memory_slices(fake)) == 2, 10)
    names = sorted(d["name"] for s in memory_slices(fake) for d in s["spec"]["devices"])
    assert names == sorted(
        ["memory-numa000", "memory-numa001", "hugepages-2mi-numa000", "hugepages-2mi-numa001"]
    )
    assert {s["spec"]["pool"]["name"] for s in memory_slices(fake)} == {NODE}

    # One claim with CPUs and memory on NUMA node 1 (as the scheduler aligns them).
    r.put_claim(
        claim(
            UID,
            [
                grouped("cpu", "cpudevnuma001", 2),
                memory_result("mem", "memory-numa001", "1Gi"),
                memory_result("hp", "hugepages-2mi-numa001", "8Mi"),
            ],
        )
    )
    cpu_response = await r.call(api, "prepare", UID)
    cpus = cpus_of(cpu_response, UID, r)
    response = await memory_call(r, api, "prepare", UID)
    assert response.claims[UID].error == ""
    devices = response.claims[UID].devices
    assert sorted(d.device_name for d in devices) == ["hugepages-2mi-numa001", "memory-numa001"]
    assert {d.pool_name for d in devices} == {NODE}
    assert {tuple(d.cdi_device_ids) for d in devices} == {(f"dra.k8s.io/memory=claim-{UID}",)}
    spec_file = root / "cdi" / f"dra.k8s.io-memory_claim-{UID}.json"
    doc = json.loads(spec_file.read_text())
    assert doc["kind"] == "dra.k8s.io/memory"
    edits = doc["devices"][0]["containerEdits"]["env"]
    assert f"DRAMEMORY_{UID}_memory=numanode:1,size:1Gi" in edits
    assert f"DRAMEMORY_{UID}_hugepages_2Mi=numanode:1,size:8Mi" in edits
    assert f"DRAMEMORY_{UID}_NUMANodes=1" in edits
    # One checkpoint holds both drivers' state.
    body = CheckpointStore(root / "state").load().body
    assert body is not None
    assert [c["uid"] for c in body["claims"]] == [UID]
    assert [m["claimUID"] for m in body["memory"]] == [UID]

    # Per-claim errors: an over-request and a bad quantity fail alone.
    r.put_claim(claim(OTHER, [memory_result("hp", "hugepages-2mi-numa001", "60Mi")]))
    r.put_claim(claim("bad", [memory_result("mem", "memory-numa000", "lots")]))
    response = await memory_call(r, api, "prepare", OTHER, "bad")
    assert "over-request" in response.claims[OTHER].error
    assert OTHER in response.claims[OTHER].error
    assert "'lots'" in response.claims["bad"].error

    # A claim deleted while the daemon is down is released after the restart.
    gone = "5e6f7a8b-0000-4000-8000-000000000002"
    r.put_claim(claim(gone, [memory_result("mem", "memory-numa000", "1Gi")]))
    assert (await memory_call(r, api, "prepare", gone)).claims[gone].error == ""

    # A restart keeps the assignment (checkpoint) and the spec.
    r.scope.cancel()
    await trio.sleep(0.05)
    fake.remove_object("resourceclaims", f"ns/claim-{gone}")
    r2 = await start(nursery, root, fake, memory_driver=True, release_grace_period=0.1)
    assert r2.daemon.start_kind == "checkpoint"
    assert r2.daemon.owner.state.claims[UID].cpus == cpus
    held = r2.daemon.owner.state.memory[UID]
    assert held.numa_nodes == (1,)
    assert MemoryCdiDir(root / "cdi").read_all()[UID] == tuple(memory_env(held))
    memory = r2.daemon.memory
    assert memory is not None
    await wait_for(lambda: memory.recovery_done, 10)
    assert memory.released_at_start == (gone,)
    assert set(r2.daemon.owner.state.memory) == {UID}
    assert set(MemoryCdiDir(root / "cdi").read_all()) == {UID}

    # Unprepare through the memory plugin releases memory only; the CPU claim stays.
    response = await memory_call(r2, api, "unprepare", UID)
    assert response.claims[UID].error == ""
    assert not spec_file.exists()
    assert UID not in r2.daemon.owner.state.memory
    assert UID in r2.daemon.owner.state.claims
    assert UID in r2.cdi().read_all()
    r2.scope.cancel()


async def test_memory_driver_is_off_by_default(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer]
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    assert r.daemon.memory is None
    assert r.daemon.owner.state.config.memory_devices == ()
    await wait_for(lambda: r.daemon.publisher.in_sync.is_set(), 10)
    assert memory_slices(fake) == []
    assert not (root / "kubelet" / "plugins_registry" / "dra.memory-reg.sock").exists()
    r.scope.cancel()


async def test_corrupt_checkpoint_rebuilds_memory_claims(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    """The checkpoint is lost: the memory claim comes back from its CDI spec, the kubelet's
    retry gets the same answer and names the requests, and the claim is not released."""
    root, fake = env
    r = await start(nursery, root, fake, memory_driver=True)
    r.put_claim(
        claim(
            UID,
            [
                grouped("cpu", "cpudevnuma001", 2),
                memory_result("mem", "memory-numa001", "1Gi"),
                memory_result("hp", "hugepages-2mi-numa001", "8Mi"),
            ],
        )
    )
    cpus = cpus_of(await r.call(api, "prepare", UID), UID, r)
    first = await memory_call(r, api, "prepare", UID)
    assert first.claims[UID].error == ""
    held = r.daemon.owner.state.memory[UID]
    r.scope.cancel()
    await trio.sleep(0.05)
    (root / "state" / "checkpoint.json").write_text("{garbage")

    r2 = await start(nursery, root, fake, memory_driver=True, release_grace_period=0.1)
    assert r2.daemon.start_kind == "rebuilt"
    state = r2.daemon.owner.state
    assert state.claims[UID].cpus == cpus
    rebuilt = state.memory[UID]
    assert rebuilt.adopted
    assert (rebuilt.numa_nodes, rebuilt.hugepage_limits) == (held.numa_nodes, held.hugepage_limits)
    assert MemoryCdiDir(root / "cdi").read_all()[UID] == tuple(memory_env(held))
    again = await memory_call(r2, api, "prepare", UID)
    assert again.claims[UID].error == ""
    assert sorted(d.device_name for d in again.claims[UID].devices) == sorted(
        d.device_name for d in first.claims[UID].devices
    )
    assert r2.daemon.owner.state.memory[UID] == held  # Named again, as before the loss.
    memory = r2.daemon.memory
    assert memory is not None
    await wait_for(lambda: memory.recovery_done, 10)
    assert memory.released_at_start == ()
    body = CheckpointStore(root / "state").load().body
    assert body is not None
    assert [m["claimUID"] for m in body["memory"]] == [UID]
    assert "adopted" not in body["memory"][0]
    r2.scope.cancel()


async def _endpoint(r: Running, path: str) -> httpx.Response:
    await wait_for(lambda: bool(r.daemon.endpoint_addresses), 10)
    port = r.daemon.endpoint_addresses[0].rsplit(":", 1)[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        return await client.get(path)


async def test_status_and_health_report_the_memory_driver(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer], api: GrpcioApi
) -> None:
    """``/healthz``, ``/readyz``, ``/status`` and ``dracpu status`` show the memory driver's own
    registration and slices, and its claims; down, the checkpoint's memory claims."""
    root, fake = env
    r = await start(nursery, root, fake, memory_driver=True)
    memory = r.daemon.memory
    assert memory is not None
    cpu_reg = r.daemon.plugin_config.paths().registration_socket  # type: ignore[union-attr]
    mem_reg = memory.plugin_config.paths().registration_socket
    await wait_for(mem_reg.exists, 10)
    await notify_registration(cpu_reg, True)
    await wait_for(lambda: r.daemon.publisher.in_sync.is_set(), 10)
    # dra.cpu is registered and in sync; dra.memory is not registered: not healthy, not ready.
    health = await _endpoint(r, "/healthz")
    assert health.status_code == 503
    assert "memory-kubelet-registration: not registered yet" in health.text
    assert "\nkubelet-registration" not in f"\n{health.text}"
    assert (await _endpoint(r, "/readyz")).status_code == 503
    doc = r.daemon.status()
    assert "dra.memory: not registered with the kubelet yet" in doc["notReady"]
    assert not doc["ready"]

    await notify_registration(mem_reg, False, "no handler for dra.memory")
    health = await _endpoint(r, "/healthz")
    assert "memory-kubelet-registration: rejected: no handler for dra.memory" in health.text
    doc = r.daemon.status()
    assert (
        "dra.memory: kubelet rejected the registration: no handler for dra.memory"
        in (doc["notReady"])
    )

    await wait_for(mem_reg.exists, 10)  # Re-created after the rejection; the kubelet retries.
    await notify_registration(mem_reg, True)
    await wait_for(lambda: memory.publisher.in_sync.is_set(), 10)
    assert (await _endpoint(r, "/readyz")).status_code == 200
    doc = json.loads((await _endpoint(r, "/status")).text)
    assert doc["ready"], doc["notReady"]
    part = doc["memoryDriver"]
    assert part["driver"] == "dra.memory"
    assert part["registration"]["registered"] is True
    assert part["publisher"]["state"] == "in-sync"
    assert part["publisher"]["slices"] == 2
    assert sorted(part["devices"]) == sorted(
        ["memory-numa000", "memory-numa001", "hugepages-2mi-numa000", "hugepages-2mi-numa001"]
    )
    assert part["claims"] == []

    r.put_claim(
        claim(
            UID,
            [
                memory_result("mem", "memory-numa001", "1Gi"),
                memory_result("hp", "hugepages-2mi-numa001", "8Mi"),
            ],
        )
    )
    assert (await memory_call(r, api, "prepare", UID)).claims[UID].error == ""
    (held,) = r.daemon.status()["memoryDriver"]["claims"]
    assert held == {
        "uid": UID,
        "adopted": False,
        "numaNodes": [1],
        "memory": {"1": "1Gi"},
        "hugepages": {"2Mi": {"1": 4}},
        "devices": [
            {"request": "mem", "device": "memory-numa001", "size": "1Gi"},
            {"request": "hp", "device": "hugepages-2mi-numa001", "size": "8Mi"},
        ],
    }
    text = render_text(await trio.to_thread.run_sync(read_status, root / "state"))
    assert "memory driver dra.memory: registration registered, publisher in-sync" in text
    assert f"uid {UID}: NUMA 1: memory-numa001 1Gi, hugepages-2mi-numa001 8Mi" in text

    r.scope.cancel()
    await trio.sleep(0.05)
    # Down: the checkpoint's memory claims.
    down = read_status(root / "state")
    assert down["daemon"] == "down"
    assert [m["claimUID"] for m in down["memoryClaims"]] == [UID]
    assert f"uid {UID}: 2 grant(s)" in render_text(down)


async def test_memory_driver_off_reports_nothing_of_it(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer]
) -> None:
    root, fake = env
    r = await start(nursery, root, fake)
    doc = r.daemon.status()
    assert doc["memoryDriver"] is None
    names = [p.name for p in r.daemon.health_parts()]
    assert names == ["kubelet-registration", "resourceslices", "enforcement"]
    assert "memory" not in render_text(doc)
    r.scope.cancel()
