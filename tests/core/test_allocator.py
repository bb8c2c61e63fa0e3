"""Allocator tables over real machine captures and named synthetic machines."""

from __future__ import annotations

from pathlib import Path

import pytest

from dracpu.core.allocator import AllocationOptions, Strategy, allocate
from dracpu.core.cpuset import CpuSet
from dracpu.core.topology import Topology
from dracpu.errors import AllocationError
from dracpu.sysfs import read_topology
from tests.support.topologies import NAMED_MACHINES, make_topology

PACKED = AllocationOptions()
FULL = AllocationOptions(full_pcpus_only=True)
SPREAD = AllocationOptions(strategy=Strategy.SPREAD)
DISTRIBUTE = AllocationOptions(distribute_across_numa=True)


def capture(shared_dir: Path, name: str) -> Topology:
    return read_topology(shared_dir / "fixtures" / "sysfs" / name / "sys")


# (capture, used CPUs, count, options, expected CPUs). Expectations are worked out by hand
# from the capture's files (see the comments), not computed by the code under test.
CAPTURE_CASES = [
    # 2 sockets x 2 NUMA, SMT siblings n/n+40, L3 per socket (0-19,40-59 / 20-39,60-79).
    ("2-socket-4-node-40-core", "", 1, PACKED, "0"),
    ("2-socket-4-node-40-core", "", 2, PACKED, "0,40"),  # one whole core
    ("2-socket-4-node-40-core", "", 3, PACKED, "0-1,40"),  # a core + a thread beside it
    # A whole NUMA node (node0 = 0-2,5-6,10-12,15-16 + siblings).
    ("2-socket-4-node-40-core", "", 20, PACKED, "0-2,5-6,10-12,15-16,40-42,45-46,50-52,55-56"),
    # NUMA node 0 + one more CPU from node1 (3), in the same socket.
    ("2-socket-4-node-40-core", "", 21, PACKED, "0-3,5-6,10-12,15-16,40-42,45-46,50-52,55-56"),
    ("2-socket-4-node-40-core", "", 40, PACKED, "0-19,40-59"),  # a whole socket
    # CPUs 0-2,40-41 used: CPU 42 is alone on a half-used core, so it goes first.
    ("2-socket-4-node-40-core", "0-2,40-41", 3, PACKED, "5,42,45"),
    # Socket 0 partly used, socket 1 free: 8 CPUs stay inside socket 0's NUMA node 1.
    ("2-socket-4-node-40-core", "0-2,5-6,10-12,15-16", 8, PACKED, "3-4,7-8,43-44,47-48"),
    # Fragmented (issue 9): NUMA-size + 2 = 22 CPUs = 11 whole cores. Whole free cores per
    # node: node0 10/50,15/55; node1 6 (7,9,14,17-19 + siblings); node2 5 (22,26,30-31,36 +
    # siblings); node3 4. Only node1 + node2 make 11 whole cores from two nodes; taking cores
    # in CPU order used to touch all four nodes.
    (
        "2-socket-4-node-40-core",
        "3-6,8,11-13,16,20-21,24,27,32,34-35,37,40-46,48,51,53,56,60-61,64-65,67,72,75,77-79",
        22,
        PACKED,
        "7,9,14,17-19,22,26,30-31,36,47,49,54,57-59,62,66,70-71,76",
    ),
    # Nodes 0, 1 (socket 0) and 2 (socket 1) have 8 whole free cores each, node 3 none: 24 CPUs
    # = 12 cores fit any two of them; the pair in one socket (one L3) wins, node 0 first (equal
    # counts go by index), then node 1's lowest cores 3-4,7-8.
    (
        "2-socket-4-node-40-core",
        "15-16,18-19,23-24,27-29,33-39,55-56,58-59,63-64,67-69,73-79",
        24,
        PACKED,
        "0-8,10-12,40-48,50-52",
    ),
    # server: NUMA nodes interleave (node0 = 0,4,8,...); siblings n/n+56.
    ("server", "", 2, PACKED, "0,56"),
    ("server", "", 4, FULL, "0,4,56,60"),
    ("server", "", 4, SPREAD, "0,4,8,12"),
    # ryzen: two CCXs (L3 0-2,6-8 and 3-5,9-11); 2 CPUs used in CCX0 → 4 more fit in CCX0.
    ("ghw-amd-ryzen-1600", "0,6", 4, PACKED, "1-2,7-8"),
    # ...but 6 CPUs only fit in the free CCX1 as whole cores.
    ("ghw-amd-ryzen-1600", "0,6", 6, PACKED, "3-5,9-11"),
    # L5640: NUMA 0 = even CPUs, siblings n/n+12 (cpu0: thread_siblings_list 0,12).
    ("ghw-intel-xeon-L5640-2numa", "", 12, PACKED, "0,2,4,6,8,10,12,14,16,18,20,22"),
    # Fits one node: distribute keeps it there, whole cores 0/12, 2/14, 4/16, 6/18.
    ("ghw-intel-xeon-L5640-2numa", "", 8, DISTRIBUTE, "0,2,4,6,12,14,16,18"),
    # 16 > 12: two nodes, 8 each, whole cores.
    ("ghw-intel-xeon-L5640-2numa", "", 16, DISTRIBUTE, "0-7,12-19"),
    # hybrid: P-cores 0-7 (4 cores x SMT2, siblings adjacent), E-cores 8-15 single threads.
    ("intel-hybrid-16cpu", "", 2, FULL, "0-1"),
    ("intel-hybrid-16cpu", "0-7", 4, PACKED, "8-11"),
]


@pytest.mark.parametrize(
    ("machine", "used", "count", "options", "expected"),
    CAPTURE_CASES,
    ids=[f"{c[0]}-used[{c[1]}]-{c[2]}-{i}" for i, c in enumerate(CAPTURE_CASES)],
)
def test_allocations_on_captures(
    shared_dir: Path,
    machine: str,
    used: str,
    count: int,
    options: AllocationOptions,
    expected: str,
) -> None:
    topo = capture(shared_dir, machine)
    free = topo.online - CpuSet.parse(used)
    assert allocate(topo, free, count, options) == CpuSet.parse(expected)


ERROR_CASES = [
    ("2-socket-4-node-40-core", "", 81, PACKED, "requested 81 CPUs but only 80 are available"),
    ("2-socket-4-node-40-core", "", 0, PACKED, "must be positive"),
    ("2-socket-4-node-40-core", "", 3, FULL, "not a multiple of the 2 threads per core"),
    # Every core half used: 40 CPUs free but no whole core.
    ("2-socket-4-node-40-core", "0-39", 2, FULL, "cannot be made of whole free cores"),
    ("desktop", "0-18", 2, PACKED, "only 1 are available"),
]


@pytest.mark.parametrize(
    ("machine", "used", "count", "options", "message"),
    ERROR_CASES,
    ids=[c[4][:30] for c in ERROR_CASES],
)
def test_allocation_errors_say_why(
    shared_dir: Path,
    machine: str,
    used: str,
    count: int,
    options: AllocationOptions,
    message: str,
) -> None:
    topo = capture(shared_dir, machine)
    with pytest.raises(AllocationError, match=message):
        allocate(topo, topo.online - CpuSet.parse(used), count, options)


def test_full_pcpus_on_hybrid_takes_whole_cores_of_mixed_width() -> None:
    # 4 SMT-2 P-cores (0-7) + 8 E-cores (8-15). P-cores 0-5 used: 3 = one P-core + one E-core.
    topo = NAMED_MACHINES["hybrid-4p8e"]()
    cpus = allocate(topo, topo.online - CpuSet.parse("0-5"), 3, FULL)
    assert cpus == CpuSet.parse("6-8")


def test_snc_claim_stays_under_one_l3() -> None:
    # 2 sockets x 2 SNC nodes x 10 cores x SMT-2, one L3 per socket. Socket 0 has scattered
    # free CPUs in both nodes; the claim must not straddle the two sockets' L3 caches.
    topo = NAMED_MACHINES["snc-2x2x10"]()
    used = CpuSet.of(range(0, 20, 2))  # every other core of socket 0, thread 0
    cpus = allocate(topo, topo.online - used, 12)
    l3s = {topo.cpus[c].l3 for c in cpus}
    assert len(l3s) == 1


def test_distribute_across_numa_splits_evenly_in_core_groups() -> None:
    topo = NAMED_MACHINES["synthetic-512"]()
    cpus = allocate(topo, topo.online, 80, DISTRIBUTE)  # > one node (64): two nodes, 40 each
    per_node = sorted(len(cpus & n) for n in topo.numas.values() if cpus & n)
    assert per_node == [40, 40]
    assert all(core <= cpus or core.isdisjoint(cpus) for core in topo.cores.values())


def test_distribute_across_numa_prefers_the_balanced_split() -> None:
    # Two 8-CPU nodes (0-7, 8-15; SMT-2, siblings adjacent); node 0 has CPUs 0-1 used, so 6 and
    # 8 are free. 10 CPUs in whole-core groups split 4+6 or 6+4; only 4 from node 0 and 6 from
    # node 1 leaves the nodes balanced (2 and 2 free).
    topo = make_topology(2, 1, 4, 2, sibling_layout="adjacent")
    cpus = allocate(topo, topo.online - CpuSet.parse("0-1"), 10, DISTRIBUTE)
    assert len(cpus & topo.numas[0]) == 4
    assert len(cpus & topo.numas[1]) == 6


def test_allocation_is_deterministic_and_within_available(shared_dir: Path) -> None:
    topo = capture(shared_dir, "server")
    free = topo.online - CpuSet.parse("0-9,56-60")
    first = allocate(topo, free, 17)
    assert first == allocate(topo, free, 17)
    assert first <= free
    assert len(first) == 17


def test_full_pcpus_does_not_take_a_whole_node_that_strands_the_rest() -> None:
    # Found by hypothesis. NUMA 0 holds two single-thread cores (4, 5: siblings 0, 1 offline),
    # NUMA 1 two SMT-2 cores (2/6, 3/7). 3 CPUs of whole cores = one 1-thread core + one 2-thread
    # core; taking all of NUMA 0 first would leave 1 CPU that only a split core could give.
    topo = make_topology(1, 2, 2, 2, offline=[0, 1])
    cpus = allocate(topo, topo.online, 3, FULL)
    assert len(cpus) == 3
    assert all(core <= cpus for core in topo.cores.values() if not core.isdisjoint(cpus))
