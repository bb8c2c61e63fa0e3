"""Topology discovery on every real-machine capture in ../shared/fixtures/sysfs.

Every expected value below was read by hand from the capture files (``cat`` of
``cpu/online``, ``cpuN/topology/*``, ``cpuN/cache/index*/{id,shared_cpu_list}``,
``node/nodeN/{cpulist,distance,meminfo}``, ``node/has_memory``, ``devices/cpu_*/cpus``, ...),
never computed with the reader. Notable facts of the captures:

- ``server``: 2 sockets interleaved (even CPUs package 0, odd package 1), 4 CPU NUMA nodes
  (every 4th CPU) plus memory-only nodes 4 and 5, SMT siblings N and N+56, core_id repeats on
  both sockets, one L3 per socket spanning two NUMA nodes, isolated 4-7,60-63.
- ``2-socket-4-node-40-core``: SNC-2 (L3 0-19,40-59 spans nodes 0 and 1), core_id repeats per
  socket, and its ``devices/cpu_atom/cpus`` (unsorted ``16-19,56-59,36-39,76-79``) marks 16
  SMT threads as E-cores, so it reads as hybrid.
- ``ghw-*`` captures have no ``cpu/online`` file and no ``cpuN/nodeM`` links; the L5640's
  CPU 0 sits on package 1 / NUMA node 0. The i7-1270P is physically hybrid but the capture has
  no ``cpu_core``/``cpu_atom`` lists, so every core reads as ``standard``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dracpu.core.topology import CoreType, Topology
from dracpu.sysfs import SysfsReader, read_topology


def ids(text: str) -> set[int]:
    """A hand-written cpu list → Python set, parsed here (not with CpuSet) to stay independent."""
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def every(start: int, stop: int, step: int) -> set[int]:
    return set(range(start, stop, step))


@dataclass(frozen=True)
class Capture:
    machine: str
    online: set[int]
    offline: set[int]
    present: set[int]
    sockets: dict[int, set[int]]
    dies: dict[tuple[int, int], set[int]]
    numa_cpus: dict[int, set[int]]
    """Every NUMA node directory → its CPUs (CPU-less nodes map to the empty set)."""
    distances: dict[int, tuple[int, ...]]
    has_memory: dict[int, bool]
    memory_kib: dict[int, int | None]
    cores_per_socket: dict[int, int]
    siblings: Callable[[int], set[int]]
    threads_per_core: int
    uniform_threads: int | None
    core_ids: dict[int, int]
    """Sample CPU → sysfs core_id."""
    l3_groups: list[set[int]]
    l2_count: int
    l2_samples: dict[int, int]
    """Sample CPU → L2 cache id."""
    p_cores: set[int]
    e_cores: set[int]
    isolated: set[int]
    smt_control: str | None
    clusters: dict[int, int | None] = field(default_factory=dict)


DESKTOP = Capture(
    machine="desktop",
    online=ids("0-19"),
    offline=set(),
    present=ids("0-19"),
    sockets={0: ids("0-19")},
    dies={(0, 0): ids("0-19")},
    numa_cpus={0: ids("0-19")},
    distances={0: (10,)},
    has_memory={0: True},
    memory_kib={0: 65621548},
    cores_per_socket={0: 10},
    siblings=lambda c: {c % 10, c % 10 + 10},
    threads_per_core=2,
    uniform_threads=2,
    core_ids={0: 0, 4: 4, 5: 8, 9: 12, 15: 8, 19: 12},
    l3_groups=[ids("0-19")],
    l2_count=10,
    l2_samples={0: 0, 10: 0, 5: 8, 19: 12},
    p_cores=set(),
    e_cores=set(),
    isolated=set(),
    smt_control="on",
    clusters={0: None, 19: None},
)

INTEL_HYBRID_16 = Capture(
    machine="intel-hybrid-16cpu",
    online=ids("0-15"),
    offline=set(),
    present=ids("0-15"),
    sockets={0: ids("0-15")},
    dies={(0, 0): ids("0-15")},
    numa_cpus={0: ids("0-15")},
    distances={0: (10,)},
    has_memory={0: True},
    memory_kib={0: 40645580},
    cores_per_socket={0: 12},
    siblings=lambda c: {c - c % 2, c - c % 2 + 1} if c < 8 else {c},
    threads_per_core=2,
    uniform_threads=None,
    core_ids={0: 0, 1: 0, 2: 4, 6: 12, 8: 16, 15: 23},
    l3_groups=[ids("0-15")],
    l2_count=6,
    l2_samples={0: 0, 3: 1, 7: 3, 8: 4, 11: 4, 12: 5, 15: 5},
    p_cores=ids("0-7"),
    e_cores=ids("8-15"),
    isolated=set(),
    smt_control="on",
    clusters={0: 0, 1: 0, 2: 8, 6: 24, 8: 32, 11: 32, 12: 40, 15: 40},
)

SERVER = Capture(
    machine="server",
    online=ids("0-111"),
    offline=set(),
    present=ids("0-111"),
    sockets={0: every(0, 112, 2), 1: every(1, 112, 2)},
    dies={(0, 0): every(0, 112, 2), (1, 0): every(1, 112, 2)},
    numa_cpus={
        0: every(0, 112, 4),
        1: every(1, 112, 4),
        2: every(2, 112, 4),
        3: every(3, 112, 4),
        4: set(),
        5: set(),
    },
    distances={
        0: (10, 21, 11, 21, 17, 28),
        1: (21, 10, 21, 11, 28, 28),
        2: (11, 21, 10, 21, 28, 17),
        3: (21, 11, 21, 10, 28, 28),
        4: (17, 28, 28, 28, 10, 28),
        5: (28, 28, 17, 28, 28, 10),
    },
    has_memory={n: True for n in range(6)},
    memory_kib={
        0: 32372996,
        1: 33023416,
        2: 33023424,
        3: 33018848,
        4: 130023424,
        5: 130023424,
    },
    cores_per_socket={0: 28, 1: 28},
    siblings=lambda c: {c % 56, c % 56 + 56},
    threads_per_core=2,
    uniform_threads=2,
    core_ids={0: 0, 1: 0, 2: 6, 3: 6, 42: 30, 43: 30, 56: 0, 57: 0},
    l3_groups=[every(0, 112, 2), every(1, 112, 2)],
    l2_count=56,
    l2_samples={0: 0, 56: 0, 1: 32, 3: 38, 43: 62},
    p_cores=set(),
    e_cores=set(),
    isolated=ids("4-7,60-63"),
    smt_control="on",
    clusters={0: None, 111: None},
)

TWO_SOCKET_SNC = Capture(
    machine="2-socket-4-node-40-core",
    online=ids("0-79"),
    offline=set(),
    present=ids("0-79"),
    sockets={0: ids("0-19,40-59"), 1: ids("20-39,60-79")},
    dies={(0, 0): ids("0-19,40-59"), (1, 0): ids("20-39,60-79")},
    numa_cpus={
        0: ids("0-2,5-6,10-12,15-16,40-42,45-46,50-52,55-56"),
        1: ids("3-4,7-9,13-14,17-19,43-44,47-49,53-54,57-59"),
        2: ids("20-22,25-26,30-32,35-36,60-62,65-66,70-72,75-76"),
        3: ids("23-24,27-29,33-34,37-39,63-64,67-69,73-74,77-79"),
    },
    distances={
        0: (10, 11, 21, 21),
        1: (11, 10, 21, 21),
        2: (21, 21, 10, 11),
        3: (21, 21, 11, 10),
    },
    has_memory={0: True, 1: True, 2: True, 3: True},
    memory_kib={0: 48005604, 1: 49507804, 2: 49540688, 3: 49539172},
    cores_per_socket={0: 20, 1: 20},
    siblings=lambda c: {c % 40, c % 40 + 40},
    threads_per_core=2,
    uniform_threads=2,
    core_ids={0: 0, 20: 0, 40: 0, 60: 0, 5: 8, 25: 8, 19: 28, 39: 28},
    l3_groups=[ids("0-19,40-59"), ids("20-39,60-79")],
    l2_count=40,
    l2_samples={0: 0, 40: 0, 20: 32, 39: 60, 79: 60},
    p_cores=ids("0-15,20-35,40-55,60-75"),
    e_cores=ids("16-19,36-39,56-59,76-79"),
    isolated=set(),
    smt_control="on",
    clusters={0: None, 79: None},
)

XEON_L5640 = Capture(
    machine="ghw-intel-xeon-L5640-2numa",
    online=ids("0-23"),
    offline=set(),
    present=ids("0-23"),
    sockets={0: every(1, 24, 2), 1: every(0, 24, 2)},
    dies={(0, 0): every(1, 24, 2), (1, 0): every(0, 24, 2)},
    numa_cpus={0: every(0, 24, 2), 1: every(1, 24, 2)},
    distances={0: (10, 20), 1: (20, 10)},
    has_memory={0: True, 1: True},
    memory_kib={0: 32980312, 1: 32940968},
    cores_per_socket={0: 6, 1: 6},
    siblings=lambda c: {c % 12, c % 12 + 12},
    threads_per_core=2,
    uniform_threads=2,
    core_ids={0: 0, 1: 0, 6: 8, 7: 8, 22: 10, 23: 10},
    l3_groups=[every(0, 24, 2), every(1, 24, 2)],
    l2_count=12,
    l2_samples={0: 16, 12: 16, 1: 0, 23: 10},
    p_cores=set(),
    e_cores=set(),
    isolated=set(),
    smt_control=None,
    clusters={0: None, 23: None},
)

RYZEN_1600 = Capture(
    machine="ghw-amd-ryzen-1600",
    online=ids("0-11"),
    offline=set(),
    present=ids("0-11"),
    sockets={0: ids("0-11")},
    dies={(0, 0): ids("0-11")},
    numa_cpus={0: ids("0-11")},
    distances={0: (10,)},
    has_memory={0: True},
    memory_kib={0: None},
    cores_per_socket={0: 6},
    siblings=lambda c: {c % 6, c % 6 + 6},
    threads_per_core=2,
    uniform_threads=2,
    core_ids={0: 0, 2: 2, 3: 4, 5: 6, 11: 6},
    l3_groups=[ids("0-2,6-8"), ids("3-5,9-11")],
    l2_count=6,
    l2_samples={0: 0, 6: 0, 3: 4, 11: 6},
    p_cores=set(),
    e_cores=set(),
    isolated=set(),
    smt_control=None,
    clusters={0: None},
)

I7_1270P = Capture(
    machine="ghw-intel-i7-1270P-hybrid",
    online=ids("0-15"),
    offline=set(),
    present=ids("0-15"),
    sockets={0: ids("0-15")},
    dies={(0, 0): ids("0-15")},
    numa_cpus={0: ids("0-15")},
    distances={0: (10,)},
    has_memory={0: True},
    memory_kib={0: 32542668},
    cores_per_socket={0: 12},
    siblings=lambda c: {c - c % 2, c - c % 2 + 1} if c < 8 else {c},
    threads_per_core=2,
    uniform_threads=None,
    core_ids={0: 0, 3: 4, 7: 12, 8: 16, 15: 23},
    l3_groups=[ids("0-15")],
    l2_count=6,
    l2_samples={0: 0, 2: 1, 6: 3, 8: 4, 12: 5},
    # No devices/cpu_core or cpu_atom in this capture: the rule gives "standard".
    p_cores=set(),
    e_cores=set(),
    isolated=set(),
    smt_control=None,
    clusters={0: 0, 2: 8, 4: 16, 8: 32, 13: 40},
)

CAPTURES = [DESKTOP, INTEL_HYBRID_16, SERVER, TWO_SOCKET_SNC, XEON_L5640, RYZEN_1600, I7_1270P]


@pytest.fixture(scope="module")
def captures_dir(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "sysfs"


_cache: dict[str, Topology] = {}


@pytest.fixture(params=CAPTURES, ids=[c.machine for c in CAPTURES])
def case(request: pytest.FixtureRequest, captures_dir: Path) -> tuple[Capture, Topology]:
    expect: Capture = request.param
    if expect.machine not in _cache:
        _cache[expect.machine] = read_topology(captures_dir / expect.machine / "sys")
    return expect, _cache[expect.machine]


def test_every_capture_has_a_table(captures_dir: Path) -> None:
    on_disk = {p.name for p in captures_dir.iterdir() if (p / "sys").is_dir()}
    assert on_disk == {c.machine for c in CAPTURES}


def test_cpu_sets(case: tuple[Capture, Topology]) -> None:
    expect, topo = case
    assert set(topo.online) == expect.online
    assert set(topo.cpus) == expect.online
    assert set(topo.offline) == expect.offline
    assert set(topo.present) == expect.present
    assert topo.num_cpus == len(expect.online)


def test_sockets_and_dies(case: tuple[Capture, Topology]) -> None:
    expect, topo = case
    assert {k: set(v) for k, v in topo.sockets.items()} == expect.sockets
    assert {k: set(v) for k, v in topo.dies.items()} == expect.dies
    for socket, cpus in expect.sockets.items():
        assert all(topo.cpus[c].socket == socket for c in cpus)


def test_numa_nodes(case: tuple[Capture, Topology]) -> None:
    expect, topo = case
    assert [n.id for n in topo.numa_nodes] == sorted(expect.numa_cpus)
    for node in topo.numa_nodes:
        assert set(node.cpus) == expect.numa_cpus[node.id], f"node{node.id} cpus"
        assert node.distances == expect.distances[node.id], f"node{node.id} distances"
        assert node.has_memory is expect.has_memory[node.id], f"node{node.id} has_memory"
        assert node.memory_kib == expect.memory_kib[node.id], f"node{node.id} MemTotal"
    # Per-CPU NUMA (from cpuN/nodeM links, or node cpulists on the ghw captures).
    with_cpus = {n: c for n, c in expect.numa_cpus.items() if c}
    assert {k: set(v) for k, v in topo.numas.items()} == with_cpus
    for node_id, cpus in with_cpus.items():
        assert all(topo.cpus[c].numa == node_id for c in cpus)


def test_cores_are_machine_unique(case: tuple[Capture, Topology]) -> None:
    expect, topo = case
    assert topo.num_cores == sum(expect.cores_per_socket.values())
    per_socket: dict[int, int] = {}
    for socket, _die, _core_id in topo.cores:
        per_socket[socket] = per_socket.get(socket, 0) + 1
    assert per_socket == expect.cores_per_socket
    for cpu in expect.online:
        assert set(topo.siblings_of(cpu)) == expect.siblings(cpu), f"siblings of cpu{cpu}"
        assert topo.machine_core_id(cpu) == min(expect.siblings(cpu))
    for cpu, core_id in expect.core_ids.items():
        assert topo.cpus[cpu].core_id == core_id, f"core_id of cpu{cpu}"
    # Cores partition the online CPUs.
    seen: set[int] = set()
    for cpus in topo.cores.values():
        assert seen.isdisjoint(cpus)
        seen |= set(cpus)
    assert seen == expect.online


def test_threads_per_core(case: tuple[Capture, Topology]) -> None:
    expect, topo = case
    assert topo.threads_per_core == expect.threads_per_core
    assert topo.uniform_threads_per_core == expect.uniform_threads
    assert topo.smt_enabled is (expect.threads_per_core > 1)


def test_caches(case: tuple[Capture, Topology]) -> None:
    expect, topo = case
    groups = sorted((set(g) for g in topo.l3_groups.values()), key=min)
    assert groups == sorted(expect.l3_groups, key=min)
    assert len(topo.l2_groups) == expect.l2_count
    for cpu, l2 in expect.l2_samples.items():
        assert topo.cpus[cpu].l2 == l2, f"L2 id of cpu{cpu}"
    # Every L2 sits inside one L3 and one core never spans two L2s.
    for l2_cpus in topo.l2_groups.values():
        assert any(l2_cpus <= l3 for l3 in topo.l3_groups.values())
    for core in topo.cores.values():
        assert len({topo.cpus[c].l2 for c in core}) == 1


def test_core_types(case: tuple[Capture, Topology]) -> None:
    expect, topo = case
    assert set(topo.cpus_of_type(CoreType.PERFORMANCE)) == expect.p_cores
    assert set(topo.cpus_of_type(CoreType.EFFICIENCY)) == expect.e_cores
    standard = expect.online - expect.p_cores - expect.e_cores
    assert set(topo.cpus_of_type(CoreType.STANDARD)) == standard
    assert topo.is_hybrid is bool(expect.e_cores)


def test_isolated_and_smt_control(case: tuple[Capture, Topology]) -> None:
    expect, topo = case
    assert set(topo.isolated) == expect.isolated
    assert topo.smt_control == expect.smt_control


def test_clusters(case: tuple[Capture, Topology]) -> None:
    expect, topo = case
    for cpu, cluster in expect.clusters.items():
        assert topo.cpus[cpu].cluster == cluster, f"cluster of cpu{cpu}"


def test_no_pcie_roots_in_captures(case: tuple[Capture, Topology]) -> None:
    _, topo = case
    # None of the captures include devices/pci*; the reader must not invent any.
    assert dict(topo.pcie_roots) == {}


def test_server_core_id_repeats_across_sockets(captures_dir: Path) -> None:
    topo = _cache.get("server") or read_topology(captures_dir / "server" / "sys")
    # CPUs 0 and 1 both report core_id 0, on packages 0 and 1: two different cores.
    assert topo.cpus[0].core_id == topo.cpus[1].core_id == 0
    assert topo.core_of[0] != topo.core_of[1]
    assert set(topo.siblings_of(0)) == {0, 56}
    assert set(topo.siblings_of(1)) == {1, 57}


def test_snc_l3_spans_numa_nodes(captures_dir: Path) -> None:
    topo = read_topology(captures_dir / "2-socket-4-node-40-core" / "sys")
    l3_of_cpu0 = next(g for g in topo.l3_groups.values() if 0 in g)
    assert topo.numas[0] | topo.numas[1] == l3_of_cpu0
    assert topo.numas[0] < l3_of_cpu0


def test_reader_object_and_function_agree(captures_dir: Path) -> None:
    root = captures_dir / "desktop" / "sys"
    assert SysfsReader(root).read_topology() == read_topology(root)
    reader = SysfsReader(root)
    assert reader.read_topology() == reader.read_topology(), "a reader is reusable"
