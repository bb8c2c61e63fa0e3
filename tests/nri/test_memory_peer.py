"""Memory enforcement over NRI against the Go runtime peer, at every pinned NRI version: a
container with a ``dra.memory`` claim gets ``cpuset.mems`` and hugepage limits in the
CreateContainer adjustment (``linux.resources.cpu.mems``, ``linux.resources.hugepage_limits``),
and CPU-only containers keep the default mems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from dracpu.core import node
from dracpu.core.claims import ClaimRef
from dracpu.core.cpuset import CpuSet
from dracpu.core.memory import GIB, MIB, HugePagePool, MemoryNode, MemoryTopology
from dracpu.core.memory_prepare import AllocatedMemory, memory_env
from dracpu.core.memory_slices import MemorySliceOptions, memory_devices
from dracpu.core.node import NodeConfig, NodeState
from dracpu.core.pinning import ContainerUpdate
from dracpu.nri import translate
from dracpu.nri.lazy import ResponseEncoder
from dracpu.nri.policy import StepDecider
from tests.nri.test_policy_peer import adjusted_cpus, env, policy_plugin, started_peer
from tests.support.claims import POOL, grouped, parsed, prepare
from tests.support.topologies import make_topology

UID = "0f3c1b2a-7d4e-4c1b-9a53-1e2d3c4b5a69"
MEMORY = MemoryTopology(
    nodes=(
        MemoryNode(0, 8 * GIB, hugepages=(HugePagePool(2 * MIB, 512), HugePagePool(GIB, 1))),
        MemoryNode(1, 8 * GIB, hugepages=(HugePagePool(2 * MIB, 256), HugePagePool(GIB, 0))),
    ),
    page_size=4096,
    hugepage_sizes=(2 * MIB, GIB),
)


def two_nodes() -> tuple[NodeState, tuple[str, ...], CpuSet]:
    """2 NUMA nodes; a memory claim (1 GiB + 16 MiB of 2 MiB pages on node 1) and a CPU claim
    ``cpu-1`` (2 CPUs of node 1). Returns the state, the memory env and the claim's CPUs."""
    topology = make_topology(sockets=2, numa_per_socket=1, cores_per_numa=2, threads=2)
    devices = tuple(memory_devices(MEMORY, MemorySliceOptions(POOL)))
    state = NodeState.initial(topology, NodeConfig(pool=POOL, memory_devices=devices))
    state, _, _ = prepare(state, parsed("cpu-1", [grouped("cpudevnuma001", 2)]))
    results = (
        AllocatedMemory("mem", POOL, "memory-numa001", {"size": "1Gi"}),
        AllocatedMemory("hp", POOL, "hugepages-2mi-numa001", {"size": "16Mi"}),
    )
    state, _ = node.step(state, node.PrepareMemory((ClaimRef("ns", "m", UID),), {UID: results}))
    return state, tuple(memory_env(state.memory[UID])), state.claims["cpu-1"].cpus


def resources(response: dict[str, Any]) -> dict[str, Any]:
    return dict(response.get("adjust", {}).get("linux", {}).get("resources", {}))


async def test_memory_claim_sets_mems_and_hugepage_limits(
    nri_peer_binary: Path, socket_path: str
) -> None:
    state, memory, cpus = two_nodes()
    decider = StepDecider(state)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peer = await started_peer(nursery, nri_peer_binary, socket_path)
            async with policy_plugin(peer, socket_path, decider):
                # CPU and memory claims: the claim's CPUs and the claimed node's memory.
                rsp = await peer.command(
                    "create", pod="p0", id="both", env=[env("cpu-1", str(cpus)), *memory]
                )
                assert adjusted_cpus(rsp) == str(cpus)
                got = resources(rsp)
                assert got["cpu"]["mems"] == "1"
                limits = {h["page_size"]: int(h.get("limit", 0)) for h in got["hugepage_limits"]}
                assert limits == {"2MB": 16 * MIB, "1GB": 0}
                # A CPU-only container keeps the node's default mems and hugetlb limits.
                await peer.command("stop-container", id="both")
                await peer.command("remove-container", id="both")
                rsp = await peer.command("create", pod="p1", id="cpu", env=["PATH=/bin"])
                got = resources(rsp)
                assert not got["cpu"].get("mems")
                assert not got.get("hugepage_limits")
            nursery.cancel_scope.cancel()


def test_lazy_encoder_keeps_memory_of_updates() -> None:
    encoder = ResponseEncoder()
    plain = ContainerUpdate("c1", CpuSet.of([1, 2]))
    placed = ContainerUpdate("c2", CpuSet.of([1, 2]), "1", ((2 * MIB, 4 * MIB),))
    for update in (plain, placed, plain):
        assert encoder.update(update) == bytes(translate.to_update(update))
