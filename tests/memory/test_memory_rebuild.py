"""Memory claims rebuilt from their CDI specs after a lost or corrupt checkpoint: what is
adopted, what is refused, the kubelet naming an adopted claim, and the container still placed on
the claimed NUMA node by the pinning policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from dracpu.cdi import CdiDir
from dracpu.checkpoint import CheckpointStore
from dracpu.core.cdi import env_entry
from dracpu.core.claims import ClaimRef
from dracpu.core.memory import GIB, MIB
from dracpu.core.memory_prepare import (
    AllocatedMemory,
    MemoryAssignment,
    MemoryClaimError,
    adopt_memory,
    assignment_from_json,
    assignment_to_json,
    memory_env,
    prepare_memory,
)
from dracpu.core.node import (
    AdjustContainer,
    ContainerCreated,
    MemoryPrepared,
    NodeState,
    PrepareMemory,
    ReplyPrepareMemory,
    WriteCheckpoint,
    restore,
    snapshot,
    step,
)
from dracpu.core.pinning import ContainerInfo, PodInfo
from dracpu.daemon.run import load_state
from dracpu.memory_cdi import MemoryCdiDir
from tests.memory.test_node_memory import DEVICES, OTHER, UID, node_state, res
from tests.support.claims import POOL, grouped, parsed, prepare

THIRD = "5e6f7a8b-0000-4000-8000-000000000002"


def held(uid: str, *results: AllocatedMemory) -> MemoryAssignment:
    return prepare_memory(uid, results, DEVICES, {}, pool=POOL)


def test_adopt_round_trips_every_kind_and_split_claims() -> None:
    one = held(UID, res("memory-numa001", "1Gi"), res("hugepages-2mi-numa001", "8Mi", "hp"))
    # One resource on two NUMA nodes: the ..._numa<N> variables.
    two = held(OTHER, res("memory-numa000", "2Gi", "a"), res("memory-numa001", "1Gi", "b"))
    assert any("_memory_numa0=" in e for e in memory_env(two))
    got, skipped = adopt_memory({UID: memory_env(one), OTHER: memory_env(two)}, DEVICES, pool=POOL)
    assert skipped == {}
    assert set(got) == {UID, OTHER}
    for uid, want in ((UID, one), (OTHER, two)):
        assert got[uid].adopted
        assert got[uid].numa_nodes == want.numa_nodes
        assert got[uid].hugepage_limits == want.hugepage_limits
        assert got[uid].memory_bytes == want.memory_bytes
        assert memory_env(got[uid]) == memory_env(want)
        assert {g.request for g in got[uid].grants} == {""}
    # The checkpoint keeps the mark.
    doc = assignment_to_json(got[UID])
    assert doc["adopted"] is True
    assert assignment_from_json(doc, origin="t") == got[UID]
    assert "adopted" not in assignment_to_json(one)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (None, "unreadable"),
        ([f"DRAMEMORY_{UID}_memory=numanode:7,size:1Gi"], "no memory device on NUMA node 7"),
        ([f"DRAMEMORY_{UID}_memory=size:1Gi"], "want numanode:<N>,size:<quantity>"),
        ([f"DRAMEMORY_{UID}_memory=numanode:1,size:lots"], "'lots'"),
        ([f"DRAMEMORY_{UID}_memory=numanode:1,size:1000"], "whole number"),
        ([f"DRAMEMORY_{OTHER}_memory=numanode:1,size:1Gi"], "not a DRAMEMORY variable"),
        # Parses, but is not what this claim's memory_env would be (no NUMANodes entry).
        ([f"DRAMEMORY_{UID}_memory=numanode:1,size:1Gi"], "is not what this claim"),
        ([f"DRAMEMORY_{UID}_NUMANodes=1"], "is not what this claim"),
        # More hugepages than node 1 has (256 x 2 MiB).
        (
            [f"DRAMEMORY_{UID}_hugepages_2Mi=numanode:1,size:1Gi", f"DRAMEMORY_{UID}_NUMANodes=1"],
            "over-request",
        ),
    ],
)
def test_bad_specs_are_not_adopted(env: list[str] | None, problem: str) -> None:
    good = held(THIRD, res("memory-numa000", "1Gi"))
    got, skipped = adopt_memory({UID: env, THIRD: memory_env(good)}, DEVICES, pool=POOL)
    assert set(got) == {THIRD}  # The good one is kept all the same.
    assert problem in skipped[UID], skipped
    assert UID in skipped[UID]


def test_two_specs_that_over_commit_a_device_together_keep_the_first() -> None:
    a = held(UID, res("hugepages-2mi-numa001", "400Mi", "hp"))
    b = held(OTHER, res("hugepages-2mi-numa001", "200Mi", "hp"))  # 600 MiB > 512 MiB on node 1
    got, skipped = adopt_memory({UID: memory_env(a), OTHER: memory_env(b)}, DEVICES, pool=POOL)
    assert set(got) == {UID}  # In UID order: 0f3c... first, then 9a1b... does not fit.
    assert "over-request" in skipped[OTHER]


def test_kubelet_names_an_adopted_claim_and_a_different_one_fails() -> None:
    original = (res("memory-numa001", "1Gi"), res("hugepages-2mi-numa001", "8Mi", "hp"))
    adopted, _ = adopt_memory({UID: memory_env(held(UID, *original))}, DEVICES, pool=POOL)
    state = NodeState.initial(node_state().topology, node_state().config, memory=adopted.values())
    refs = (ClaimRef("ns", "claim", UID),)
    after, effects = step(state, PrepareMemory(refs, {UID: original}))
    reply = effects[-1]
    assert isinstance(reply, ReplyPrepareMemory)
    outcome = reply.results[UID]
    assert isinstance(outcome, MemoryPrepared)
    named = after.memory[UID]
    assert not named.adopted
    assert sorted(g.request for g in named.grants) == ["hp", "mem"]
    assert any(isinstance(e, WriteCheckpoint) for e in effects)  # The names are made durable.
    assert memory_env(named) == memory_env(adopted[UID])
    # Other amounts than the spec said are refused, adopted or not.
    with pytest.raises(MemoryClaimError, match="different allocation"):
        prepare_memory(UID, (res("memory-numa001", "2Gi"),), DEVICES, adopted, pool=POOL)


def test_corrupt_checkpoint_rebuilds_memory_and_the_container_keeps_its_mems(
    tmp_path: Path,
) -> None:
    base = node_state()
    state, _, _ = prepare(base, parsed("cpu-1", [grouped("cpudevnuma001", 2)]))
    assignment = held(UID, res("memory-numa001", "1Gi"), res("hugepages-2mi-numa001", "8Mi", "hp"))
    store = CheckpointStore(tmp_path / "state", durable=False)
    cdi, memory_cdi = CdiDir(tmp_path / "cdi"), MemoryCdiDir(tmp_path / "cdi")
    cpus = state.claims["cpu-1"].cpus
    cdi.write("cpu-1", cpus)
    memory_cdi.write(UID, memory_env(assignment))
    memory_cdi.write(OTHER, ["DRAMEMORY_garbage"])  # Not adopted: logged, removed later.
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_text("{garbage")

    rebuilt, kind = load_state(base.topology, base.config, store, cdi, memory_cdi)
    assert kind == "rebuilt"
    assert set(rebuilt.claims) == {"cpu-1"}
    assert set(rebuilt.memory) == {UID}
    assert rebuilt.memory[UID].adopted
    assert rebuilt.memory[UID].numa_nodes == (1,)
    # Written back at once, memory included.
    loaded = store.load()
    assert loaded.body is not None
    assert restore(loaded.body, base.topology, base.config).memory == rebuilt.memory

    # A container of the claim (created again, e.g. restarted) is placed as before: the
    # claim's CPUs, mems = node 1, hugetlb limits from the rebuilt assignment.
    env = (env_entry("cpu-1", cpus), *memory_env(assignment))
    info = ContainerInfo(pod=PodInfo("p", "default", "p"), id="c1", name="app", env=env)
    _, effects = step(rebuilt, ContainerCreated(info))
    (adjust,) = effects
    assert isinstance(adjust, AdjustContainer)
    assert adjust.cpus == cpus
    assert adjust.memory.mems == (1,)
    assert adjust.memory.hugepage_limits == ((2 * MIB, 8 * MIB), (GIB, 0))
    # Unchanged when the checkpoint is simply gone but the specs remain.
    store.path.unlink()
    again, kind = load_state(base.topology, base.config, store, cdi, memory_cdi)
    assert kind == "rebuilt"
    assert again.memory == rebuilt.memory


def test_only_memory_specs_left_is_not_a_fresh_start(tmp_path: Path) -> None:
    base = node_state()
    store = CheckpointStore(tmp_path / "state", durable=False)
    cdi, memory_cdi = CdiDir(tmp_path / "cdi"), MemoryCdiDir(tmp_path / "cdi")
    memory_cdi.write(UID, memory_env(held(UID, res("memory-numa000", "1Gi"))))
    state, kind = load_state(base.topology, base.config, store, cdi, memory_cdi)
    assert kind == "rebuilt"
    assert set(state.memory) == {UID}
    assert snapshot(state)["memory"][0]["adopted"] is True
