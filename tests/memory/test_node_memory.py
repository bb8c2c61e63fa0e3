"""``dra.memory`` claims through the node state machine: prepare/unprepare, the checkpoint, and
the pinning policy's ``cpuset.mems`` and hugetlb limits."""

from __future__ import annotations

import json

import pytest

from dracpu.core.cdi import env_entry
from dracpu.core.claims import ClaimRef
from dracpu.core.memory import GIB, MIB, HugePagePool, MemoryNode, MemoryTopology
from dracpu.core.memory_claims import parse_memory_claim
from dracpu.core.memory_pinning import hugetlb_size_name, memory_claims_in_env
from dracpu.core.memory_prepare import AllocatedMemory, cdi_device_id, memory_env
from dracpu.core.memory_slices import MemorySliceOptions, memory_devices
from dracpu.core.node import (
    AdjustContainer,
    ClaimFailed,
    ContainerCreated,
    ContainerUpdating,
    MemoryPrepared,
    NodeConfig,
    NodeState,
    PrepareMemory,
    RejectContainer,
    RemoveMemoryCdiSpec,
    ReplyPrepareMemory,
    ReplySynchronize,
    ReplyUnprepare,
    RuntimeSynchronized,
    UnprepareMemory,
    WriteCheckpoint,
    WriteMemoryCdiSpec,
    restore,
    snapshot,
    step,
)
from dracpu.core.pinning import ContainerInfo, PodInfo
from dracpu.errors import InvalidValueError
from tests.support.claims import POOL, grouped, parsed, prepare
from tests.support.topologies import make_topology

UID = "0f3c1b2a-7d4e-4c1b-9a53-1e2d3c4b5a69"
OTHER = "9a1b2c3d-0000-4000-8000-000000000001"
POD = PodInfo("pod-a", "default", "a")

MEMORY = MemoryTopology(
    nodes=(
        MemoryNode(0, 8 * GIB, hugepages=(HugePagePool(2 * MIB, 512), HugePagePool(GIB, 1))),
        MemoryNode(1, 8 * GIB, hugepages=(HugePagePool(2 * MIB, 256), HugePagePool(GIB, 0))),
    ),
    page_size=4096,
    hugepage_sizes=(2 * MIB, GIB),
)
DEVICES = tuple(memory_devices(MEMORY, MemorySliceOptions(POOL)))


def node_state(**kw: object) -> NodeState:
    """2 NUMA nodes x 2 cores x 2 threads: NUMA 0 = CPUs 0-1,4-5... (make_topology order)."""
    topology = make_topology(sockets=2, numa_per_socket=1, cores_per_numa=2, threads=2)
    config = NodeConfig(pool=POOL, memory_devices=DEVICES, **kw)  # type: ignore[arg-type]
    return NodeState.initial(topology, config)


def res(device: str, size: str, request: str = "mem") -> AllocatedMemory:
    return AllocatedMemory(request, POOL, device, {"size": size})


def prepare_memory(
    state: NodeState, claims: dict[str, tuple[AllocatedMemory, ...] | str]
) -> tuple[NodeState, tuple[object, ...], ReplyPrepareMemory]:
    refs = tuple(ClaimRef("ns", f"claim-{uid}", uid) for uid in claims)
    after, effects = step(state, PrepareMemory(refs, claims))
    reply = effects[-1]
    assert isinstance(reply, ReplyPrepareMemory)
    return after, effects, reply


def test_prepare_checkpoints_first_writes_cdi_and_replies() -> None:
    state = node_state()
    after, effects, reply = prepare_memory(
        state, {UID: (res("memory-numa001", "1Gi"), res("hugepages-2mi-numa001", "4Mi", "hp"))}
    )
    assert isinstance(effects[0], WriteCheckpoint)
    assert effects[0].state is after
    outcome = reply.results[UID]
    assert isinstance(outcome, MemoryPrepared)
    assert outcome.cdi_device_ids == (cdi_device_id(UID),) == (f"dra.k8s.io/memory=claim-{UID}",)
    assert outcome.assignment.numa_nodes == (1,)
    (cdi,) = [e for e in effects if isinstance(e, WriteMemoryCdiSpec)]
    assert cdi.env == tuple(memory_env(outcome.assignment))
    assert f"DRAMEMORY_{UID}_memory=numanode:1,size:1Gi" in cdi.env
    assert f"DRAMEMORY_{UID}_hugepages_2Mi=numanode:1,size:4Mi" in cdi.env
    assert f"DRAMEMORY_{UID}_NUMANodes=1" in cdi.env
    assert after.memory[UID] == outcome.assignment
    # CPU claims are untouched, and the same UID may hold CPUs too (one claim, two drivers).
    assert not after.claims


def test_again_is_idempotent_without_a_checkpoint() -> None:
    state, _, _ = prepare_memory(node_state(), {UID: (res("memory-numa000", "256Mi"),)})
    again, effects, reply = prepare_memory(state, {UID: (res("memory-numa000", "256Mi"),)})
    assert again is state
    assert not any(isinstance(e, WriteCheckpoint) for e in effects)
    assert any(isinstance(e, WriteMemoryCdiSpec) for e in effects)  # Rewritten: replay-safe.
    assert isinstance(reply.results[UID], MemoryPrepared)


@pytest.mark.parametrize(
    ("results", "problem"),
    [
        ((res("memory-numa000", "lots"),), "lots"),
        ((res("hugepages-2mi-numa000", "3Mi"),), "whole number"),
        ((res("hugepages-1gi-numa000", "2Gi"),), "over-request"),
        ((res("memory-numa009", "1Mi"),), "not a device"),
        ((AllocatedMemory("mem", "other-node", "memory-numa000", {"size": "1Mi"}),), "pool"),
    ],
)
def test_bad_claims_fail_alone(results: tuple[AllocatedMemory, ...], problem: str) -> None:
    state = node_state()
    after, _effects, reply = prepare_memory(
        state, {UID: results, OTHER: (res("memory-numa000", "1Gi"),)}
    )
    failed = reply.results[UID]
    assert isinstance(failed, ClaimFailed)
    assert problem in failed.error
    assert UID in failed.error
    assert isinstance(reply.results[OTHER], MemoryPrepared)
    assert set(after.memory) == {OTHER}


def test_two_claims_cannot_over_commit_a_device_together() -> None:
    _state, _, reply = prepare_memory(
        node_state(),
        {
            UID: (res("hugepages-2mi-numa001", "400Mi"),),
            OTHER: (res("hugepages-2mi-numa001", "200Mi"),),
        },
    )
    assert isinstance(reply.results[UID], MemoryPrepared)
    assert isinstance(reply.results[OTHER], ClaimFailed)
    assert "over-request" in reply.results[OTHER].error  # type: ignore[union-attr]


def test_fetch_errors_and_missing_claims_fail() -> None:
    state = node_state()
    refs = (ClaimRef("ns", "a", UID), ClaimRef("ns", "b", OTHER))
    _, effects = step(state, PrepareMemory(refs, {UID: "ResourceClaim ns/a: not found in the API"}))
    reply = effects[-1]
    assert isinstance(reply, ReplyPrepareMemory)
    assert reply.results[UID] == ClaimFailed("ResourceClaim ns/a: not found in the API")
    assert "not found" in reply.results[OTHER].error  # type: ignore[union-attr]
    assert not any(isinstance(e, WriteCheckpoint) for e in effects)


def test_unprepare_releases_and_removes_the_spec() -> None:
    state, _, _ = prepare_memory(node_state(), {UID: (res("memory-numa000", "1Gi"),)})
    after, effects = step(state, UnprepareMemory((ClaimRef("ns", "c", UID),)))
    assert not after.memory
    assert isinstance(effects[0], WriteCheckpoint)
    assert RemoveMemoryCdiSpec(UID) in effects
    assert isinstance(effects[-1], ReplyUnprepare)
    # Unknown: succeeds, no checkpoint, the spec removal clears leftovers.
    again, effects = step(after, UnprepareMemory((ClaimRef("ns", "c", UID),)))
    assert again is after
    assert not any(isinstance(e, WriteCheckpoint) for e in effects)


def test_checkpoint_round_trip_with_memory_and_cpus() -> None:
    state, _, _ = prepare(node_state(), parsed("cpu-1", [grouped("cpudevnuma000", 2)]))
    state, _, _ = prepare_memory(
        state, {UID: (res("memory-numa001", "1Gi"), res("hugepages-1gi-numa000", "1Gi", "hp"))}
    )
    payload = json.loads(json.dumps(snapshot(state)))
    back = restore(payload, state.topology, state.config)
    assert back.memory == state.memory
    assert back.claims == state.claims
    # A checkpoint of a dracpu without the memory driver has no "memory" section: none held.
    del payload["memory"]
    old = restore(payload, state.topology, state.config)
    assert not old.memory
    assert old.claims == state.claims
    with pytest.raises(InvalidValueError, match="memory"):
        restore({**payload, "memory": {"x": 1}}, state.topology, state.config)
    with pytest.raises(InvalidValueError, match="memory\\[0\\]"):
        restore(
            {**payload, "memory": [{"claimUID": UID, "grants": [{}]}]}, state.topology, state.config
        )


def container(env: tuple[str, ...], cid: str = "c1", name: str = "app") -> ContainerInfo:
    return ContainerInfo(pod=POD, id=cid, name=name, env=env)


def test_memory_claim_sets_mems_and_hugetlb_limits() -> None:
    state, _, reply = prepare_memory(
        node_state(),
        {UID: (res("memory-numa001", "1Gi"), res("hugepages-2mi-numa001", "8Mi", "hp"))},
    )
    env = tuple(memory_env(reply.results[UID].assignment))  # type: ignore[union-attr]
    after, effects = step(state, ContainerCreated(container(env)))
    (adjust,) = effects
    assert isinstance(adjust, AdjustContainer)
    # No CPU claim: shared CPUs, but memory on the claimed node.
    assert adjust.cpus == state.shared_pool
    assert adjust.memory.mems == (1,)
    assert adjust.memory.mems_text == "1"
    # Every hugepage size the node publishes is limited, 0 where nothing is claimed.
    assert adjust.memory.hugepage_limits == ((2 * MIB, 8 * MIB), (GIB, 0))
    # An update re-asserts the same memory placement.
    _, effects = step(after, ContainerUpdating(container(env)))
    (update,) = effects[0].updates  # type: ignore[union-attr]
    assert update.mems == "1"
    assert update.hugepage_limits == ((2 * MIB, 8 * MIB), (GIB, 0))


def test_cpu_and_memory_claims_together() -> None:
    state, _, _ = prepare(node_state(), parsed("cpu-1", [grouped("cpudevnuma001", 2)]))
    state, _, reply = prepare_memory(state, {UID: (res("memory-numa001", "1Gi"),)})
    cpus = state.claims["cpu-1"].cpus
    env = (env_entry("cpu-1", cpus), *memory_env(reply.results[UID].assignment))  # type: ignore[union-attr]
    _, effects = step(state, ContainerCreated(container(env)))
    adjust = effects[0]
    assert isinstance(adjust, AdjustContainer)
    assert adjust.cpus == cpus
    assert adjust.memory.mems == (1,)


def test_cpu_only_keeps_default_mems_unless_bound() -> None:
    for bind, want in ((False, ()), (True, (1,))):
        state, _, _ = prepare(
            node_state(bind_memory_to_cpus=bind), parsed("cpu-1", [grouped("cpudevnuma001", 2)])
        )
        cpus = state.claims["cpu-1"].cpus
        assert {state.topology.cpus[c].numa for c in cpus} == {1}
        _, effects = step(state, ContainerCreated(container((env_entry("cpu-1", cpus),))))
        adjust = effects[0]
        assert isinstance(adjust, AdjustContainer)
        assert adjust.memory.mems == want
        assert adjust.memory.hugepage_limits == ()
    # A shared container is never bound, flag or not.
    state = node_state(bind_memory_to_cpus=True)
    _, effects = step(state, ContainerCreated(container(())))
    assert effects[0].memory.mems == ()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ((f"DRAMEMORY_{OTHER}_NUMANodes=0",), "not prepared"),
        ((f"DRAMEMORY_{UID}_NUMANodes=0",), "prepared on (1,)"),
        ((f"DRAMEMORY_{UID}_NUMANodes=x",), "not a NUMA node list"),
    ],
)
def test_forged_memory_env_is_rejected(env: tuple[str, ...], problem: str) -> None:
    state, _, _ = prepare_memory(node_state(), {UID: (res("memory-numa001", "1Gi"),)})
    after, effects = step(state, ContainerCreated(container(env)))
    (reject,) = effects
    assert isinstance(reject, RejectContainer)
    assert problem in reject.reason
    assert "DRAMEMORY_" in reject.reason
    assert after is state


def test_synchronize_reasserts_memory() -> None:
    state, _, reply = prepare_memory(node_state(), {UID: (res("memory-numa000", "1Gi"),)})
    env = tuple(memory_env(reply.results[UID].assignment))  # type: ignore[union-attr]
    running = ContainerInfo(POD, "c1", "app", env, cpus=state.shared_pool)
    _, effects = step(state, RuntimeSynchronized((running,)))
    sync = effects[-1]
    assert isinstance(sync, ReplySynchronize)
    (update,) = sync.updates
    assert update.cpus == state.shared_pool
    assert update.mems == "0"


def test_env_parsing_and_size_names() -> None:
    assert memory_claims_in_env(
        (f"DRAMEMORY_{UID}_NUMANodes=1,0", f"DRAMEMORY_{UID}_memory=numanode:1,size:1Gi", "X=1")
    ) == {UID: (0, 1)}
    assert [hugetlb_size_name(s) for s in (2 * MIB, GIB, 64 * 1024, 4096 + 1)] == [
        "2MB",
        "1GB",
        "64KB",
        "4097B",
    ]


def test_parse_memory_claim_keeps_only_memory_results() -> None:
    obj = {
        "metadata": {"namespace": "ns", "name": "c", "uid": UID},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": "cpu", "driver": "dra.cpu", "pool": POOL, "device": "d"},
                        {
                            "request": "mem",
                            "driver": "dra.memory",
                            "pool": POOL,
                            "device": "memory-numa000",
                            "consumedCapacity": {"size": "1Gi"},
                        },
                    ]
                }
            }
        },
    }
    ref, results = parse_memory_claim(obj)
    assert ref == ClaimRef("ns", "c", UID)
    assert results == (AllocatedMemory("mem", POOL, "memory-numa000", {"size": "1Gi"}),)
    with pytest.raises(InvalidValueError, match="not allocated"):
        parse_memory_claim({"metadata": {"uid": UID, "name": "c", "namespace": "ns"}})
