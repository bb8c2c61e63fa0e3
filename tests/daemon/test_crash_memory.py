"""Crash tests for ``dra.memory`` claims: ``dracpu run --memory-driver`` as a subprocess, killed
at each effect boundary while preparing a memory claim, then restarted: the checkpoint holds the
claim, its CDI spec is back, and the kubelet's retry gets the same assignment."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from dracpu.checkpoint import CheckpointStore
from dracpu.daemon.owner import CRASH_EXIT_STATUS, CRASH_POINTS
from dracpu.memory_cdi import MemoryCdiDir
from tests.daemon.support import NODE, claim, dra_api, kubelet_call, short_dir, write_machine
from tests.daemon.test_crash import Node, stop
from tests.daemon.test_memory_driver import memory_result, write_hugepages
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_http import serve_fake_http, write_kubeconfig

M1 = "0f3c1b2a-7d4e-4c1b-9a53-1e2d3c4b5a69"
M2 = "9a1b2c3d-0000-4000-8000-000000000001"


class MemoryNode(Node):
    """The crash tests' node with the memory driver on; waits for both registrations."""

    @property
    def registration_socket(self) -> Path:
        return self.root / "kubelet" / "plugins_registry" / "dra.memory-reg.sock"

    @property
    def memory_socket(self) -> Path:
        return self.root / "kubelet" / "plugins" / "dra.memory" / "dra.sock"

    def argv(self) -> list[str]:
        return [*super().argv(), "--memory-driver"]

    async def start(self, crash_at: str | None = None) -> trio.Process:
        self.memory_socket.unlink(missing_ok=True)
        (self.root / "kubelet" / "plugins_registry" / "dra.cpu-reg.sock").unlink(missing_ok=True)
        return await super().start(crash_at)

    async def prepare_memory(self, *uids: str) -> Any:
        claims = [("ns", f"claim-{u}", u) for u in uids]
        return await kubelet_call(self.memory_socket, self.api, "prepare", claims)

    def memory_checkpoint(self) -> dict[str, Any]:
        body = CheckpointStore(self.root / "state").load().body
        assert body is not None
        return {m["claimUID"]: m for m in body.get("memory", [])}


@pytest.fixture
async def mnode(nursery: trio.Nursery) -> AsyncIterator[MemoryNode]:
    with short_dir("dcm-") as root:
        write_hugepages(write_machine(root), {0: 64, 1: 32})
        fake = FakeApiServer()
        fake.put_object("nodes", {"metadata": {"name": NODE}})
        port = await nursery.start(serve_fake_http, fake)
        write_kubeconfig(root / "kubeconfig", port)
        fake.put_object("resourceclaims", claim(M1, [memory_result("m", "memory-numa000", "1Gi")]))
        fake.put_object(
            "resourceclaims", claim(M2, [memory_result("h", "hugepages-2mi-numa001", "16Mi")])
        )
        running = MemoryNode(root, fake, dra_api("v1"))
        try:
            yield running
        finally:
            for proc in running.procs:
                if proc.poll() is None:
                    proc.kill()
                    await proc.wait()


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_memory_crash_at_each_effect_boundary(mnode: MemoryNode, point: str) -> None:
    proc = await mnode.start()
    assert (await mnode.prepare_memory(M1)).claims[M1].error == ""
    await stop(proc)

    proc = await mnode.start(crash_at=point)
    with pytest.raises(grpc.RpcError) as info:
        await mnode.prepare_memory(M2)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await stop(proc) == CRASH_EXIT_STATUS
    held = mnode.memory_checkpoint()
    assert set(held) == {M1, M2}

    proc = await mnode.start()
    specs = MemoryCdiDir(mnode.root / "cdi").read_all()
    assert set(specs) == {M1, M2}  # Start-up rewrote M2's spec if the crash preceded it.
    assert f"DRAMEMORY_{M2}_hugepages_2Mi=numanode:1,size:16Mi" in (specs[M2] or ())
    retry = await mnode.prepare_memory(M2)
    assert retry.claims[M2].error == ""
    assert mnode.memory_checkpoint() == held
    assert await stop(proc, signal.SIGTERM) == 0
