"""The Topology model's derived indexes, and the test builders other tests rely on
(``make_topology``, ``NAMED_MACHINES``, the ``topologies()`` strategy)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from dracpu.core.cpuset import CpuSet
from dracpu.core.topology import CoreType, CpuInfo, Topology
from dracpu.errors import TopologyError
from tests.support.topologies import NAMED_MACHINES, make_topology, topologies


def s(text: str) -> CpuSet:
    return CpuSet.parse(text)


def test_cpu_map_key_must_match() -> None:
    info = CpuInfo(cpu=1, socket=0, die=0, core_id=0, numa=0)
    with pytest.raises(TopologyError, match="key 0 holds the facts of CPU 1"):
        Topology(cpus={0: info})


def test_core_key_separates_sockets() -> None:
    # Two CPUs reporting core_id 0 on different packages are two cores.
    topo = Topology(
        cpus={
            0: CpuInfo(cpu=0, socket=0, die=0, core_id=0, numa=0),
            1: CpuInfo(cpu=1, socket=1, die=0, core_id=0, numa=1),
        }
    )
    assert topo.num_cores == 2
    assert topo.threads_per_core == 1
    assert topo.present == s("0-1")


def test_empty_topology() -> None:
    topo = Topology(cpus={})
    assert topo.num_cpus == 0
    assert topo.threads_per_core == 0
    assert topo.uniform_threads_per_core is None
    assert not topo.smt_enabled


def test_synthetic_512() -> None:
    topo = NAMED_MACHINES["synthetic-512"]()
    assert topo.num_cpus == 512
    assert len(topo.numas) == 8
    assert len(topo.sockets) == 2
    assert topo.num_cores == 256
    assert topo.uniform_threads_per_core == 2
    assert all(len(c) == 64 for c in topo.numas.values())
    assert len(topo.l3_groups) == 8
    # x86 numbering: thread 1 of core k is CPU 256 + k.
    assert topo.siblings_of(0) == s("0,256")
    assert topo.numas[0] == s("0-31,256-287")


def test_hybrid_4p8e_matches_intel_hybrid_capture_layout() -> None:
    topo = NAMED_MACHINES["hybrid-4p8e"]()
    assert topo.cpus_of_type(CoreType.PERFORMANCE) == s("0-7")
    assert topo.cpus_of_type(CoreType.EFFICIENCY) == s("8-15")
    assert topo.num_cores == 12
    assert {str(g) for g in topo.l2_groups.values()} == {
        "0-1",
        "2-3",
        "4-5",
        "6-7",
        "8-11",
        "12-15",
    }


def test_snc_named_machine() -> None:
    topo = NAMED_MACHINES["snc-2x2x10"]()
    assert len(topo.numas) == 4
    assert len(topo.l3_groups) == 2
    assert topo.numas[0] < topo.l3_groups[0]


@pytest.mark.parametrize("name", sorted(NAMED_MACHINES))
def test_named_machines_build(name: str) -> None:
    topo = NAMED_MACHINES[name]()
    assert topo.num_cpus > 0
    assert topo == NAMED_MACHINES[name](), "builders are deterministic"


def test_make_topology_offline_and_extras() -> None:
    topo = make_topology(
        2,
        1,
        2,
        2,
        offline=[3, 7],
        cpuless_nodes=1,
        memoryless_nodes=[1],
        isolated=[0],
        pcie_roots_per_socket=1,
    )
    # thread 0: CPUs 0-3 (0-1 socket 0), thread 1: CPUs 4-7; CPU 3 and 7 = socket 1 core 1.
    assert topo.offline == s("3,7")
    assert topo.present == s("0-7")
    assert topo.sockets == {0: s("0-1,4-5"), 1: s("2,6")}
    assert [n.has_memory for n in topo.numa_nodes] == [True, False, True]
    assert topo.numa_nodes[2].cpus == s("")
    assert topo.numa_nodes[2].distances == (17, 28, 10)
    assert dict(topo.pcie_roots) == {"pci0000:00": s("0-1,4-5"), "pci0000:80": s("2,6")}
    assert topo.isolated == s("0")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"sockets": 0}, id="no-sockets"),
        pytest.param({"cores_per_numa": (2,), "sockets": 2}, id="wrong-count-list"),
        pytest.param({"offline": [99]}, id="offline-unknown-cpu"),
    ],
)
def test_make_topology_rejects_bad_shapes(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"."):
        make_topology(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(topologies())
def test_generated_topologies_are_consistent(topo: Topology) -> None:
    assert 1 <= topo.num_cpus <= len(topo.present) <= 256
    assert 1 <= len(topo.sockets) <= 8
    assert topo.online.isdisjoint(topo.offline)
    assert topo.online | topo.offline == topo.present
    for index in (topo.cores, topo.numas, topo.sockets, topo.dies):
        union = CpuSet()
        for cpus in index.values():
            assert union.isdisjoint(cpus)
            union |= cpus
        assert union == topo.online
    for core in topo.cores.values():
        assert len(core) in (1, 2, 3, 4)
        assert len({topo.cpus[c].numa for c in core}) == 1
        assert len({topo.cpus[c].core_type for c in core}) == 1
    for node in topo.numa_nodes:
        assert node.cpus == topo.numas.get(node.id, CpuSet())
        assert len(node.distances) == len(topo.numa_nodes)
    types = {i.core_type for i in topo.cpus.values()}
    assert types <= {CoreType.STANDARD} or CoreType.STANDARD not in types
