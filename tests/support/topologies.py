"""In-memory ``Topology`` objects for tests and benchmarks, without touching sysfs.

Two entry points, both stable API for allocator / slice tests and bench/:

``make_topology(sockets, numa_per_socket, cores_per_numa, threads, *, ...)``
    A plain-Python builder of a regular (or deliberately irregular) machine. Keyword options:

    - ``offline``: CPU ids taken offline. They leave ``Topology.cpus`` and NUMA ``cpus`` and
      appear in ``Topology.offline``; ``present`` still holds them (as on a real kernel).
    - ``hybrid``: ``False`` (default) → every core is ``standard``; ``True`` → in every NUMA node
      the first half of the cores (rounded up) are P-cores with ``threads`` threads and the rest
      are single-threaded E-cores; an ``int`` n ≥ 1 → the last n cores of every NUMA node are
      E-cores. E-cores share an L2 and a cluster in groups of four, as on Intel. A machine whose
      nodes are all too small for an E-core (one core each) comes out non-hybrid.
    - ``l3_per``: what shares one L3 cache: ``"socket"`` (default; with several NUMA nodes per
      socket this is an SNC layout where one L3 spans them), ``"numa"``, ``"die"``, ``"none"``
      (no L3 at all), or an ``int`` k: every k consecutive cores of a NUMA node share an L3
      (AMD CCX style); when k does not divide the core count the last group is smaller.
    - ``cores_per_numa`` may be a sequence with one count per NUMA node (uneven machines).
    - ``dies_per_socket``: a socket's cores are split into this many contiguous dies.
    - ``cluster_size``: every k consecutive cores of a NUMA node form a cluster (ARM / Intel
      module style); default ``None`` → no clusters (sysfs ``cluster_id`` 65535) except the
      E-core groups of hybrid machines.
    - ``sibling_layout``: ``"spread"`` (default, x86 Linux numbering: thread 0 of every core
      first, then thread 1 of every core, …; so on 2x10x2 CPU 0's sibling is CPU 20) or
      ``"adjacent"`` (siblings get consecutive ids: 0,1 = core 0).
    - ``cpuless_nodes``: extra memory-only NUMA nodes appended after the CPU nodes (like CXL
      or HBM nodes); ``memoryless_nodes``: ids of CPU nodes reported without memory.
    - ``isolated``, ``smt_control`` (default ``"on"`` with SMT, ``"notsupported"`` without),
      ``pcie_roots_per_socket`` (roots named ``pciDDDD:BB`` whose affinity is their socket's
      first NUMA node's online CPUs).

    Facts per CPU: ``socket`` = package index; ``die`` = die index inside the socket;
    ``core_id`` = core index inside its socket (so it REPEATS on every socket, as sysfs does);
    ``numa`` = global NUMA index (socket-major); ``l2`` = global core index (or E-core group);
    ``l3`` = global L3 group index. Distances: 10 local, 12 same socket, 21 other socket,
    memory-only nodes 17 from their socket's CPU nodes and 28 from the rest.

``topologies(*, max_cpus=256, ...)``
    A hypothesis strategy of such machines: 1-8 sockets, 1-4 NUMA nodes per socket, SMT 1/2/4,
    sometimes uneven per-NUMA core counts, uneven L3 sizes, hybrid variants, and sometimes
    unevenly offlined CPUs (never all of them). At most ``max_cpus`` present CPUs (default
    256) so property tests stay fast. ``cpu_subsets(cpus)`` draws subsets (free sets).

Named machines: ``NAMED_MACHINES`` maps a name to a zero-argument builder, e.g.
``NAMED_MACHINES["synthetic-512"]()`` → 2 sockets x 4 NUMA x 32 cores x SMT-2 = 512 CPUs,
8 NUMA nodes (the benchmark machine of issue 2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from hypothesis import strategies as st

from dracpu.core.cpuset import CpuSet
from dracpu.core.topology import CoreType, CpuInfo, NumaNode, Topology

L3Per = Literal["socket", "numa", "die", "none"] | int
SiblingLayout = Literal["spread", "adjacent"]

__all__ = [
    "NAMED_MACHINES",
    "L3Per",
    "SiblingLayout",
    "cpu_subsets",
    "make_topology",
    "synthetic_512",
    "topologies",
]


@dataclass(frozen=True)
class _Core:
    socket: int
    die: int
    core_id: int
    numa: int
    threads: int
    core_type: CoreType
    l2: int
    l3: int | None
    cluster: int | None


def make_topology(
    sockets: int = 1,
    numa_per_socket: int = 1,
    cores_per_numa: int | Sequence[int] = 4,
    threads: int = 2,
    *,
    offline: Iterable[int] = (),
    hybrid: bool | int = False,
    l3_per: L3Per = "socket",
    dies_per_socket: int = 1,
    cluster_size: int | None = None,
    sibling_layout: SiblingLayout = "spread",
    cpuless_nodes: int = 0,
    memoryless_nodes: Iterable[int] = (),
    isolated: Iterable[int] = (),
    smt_control: str | None = "",
    pcie_roots_per_socket: int = 0,
    memory_kib_per_node: int = 16 * 1024 * 1024,
) -> Topology:
    """Build a synthetic machine; see the module docstring for every option."""
    if sockets < 1 or numa_per_socket < 1 or threads < 1 or dies_per_socket < 1:
        raise ValueError("sockets, numa_per_socket, threads and dies_per_socket must be ≥ 1")
    if sockets * pcie_roots_per_socket > 256:
        raise ValueError("at most 256 PCIe root buses")
    num_numa = sockets * numa_per_socket
    per_numa = (
        [cores_per_numa] * num_numa if isinstance(cores_per_numa, int) else list(cores_per_numa)
    )
    if len(per_numa) != num_numa or any(c < 1 for c in per_numa):
        raise ValueError(f"cores_per_numa needs {num_numa} counts ≥ 1, got {cores_per_numa!r}")

    cores = _layout_cores(
        sockets, numa_per_socket, per_numa, threads, hybrid, l3_per, dies_per_socket, cluster_size
    )
    cpu_ids = _number_cpus(cores, sibling_layout)

    offline_set = CpuSet.of(offline)
    all_cpus = CpuSet.of(cpu for ids in cpu_ids for cpu in ids)
    if not offline_set <= all_cpus:
        raise ValueError(f"offline CPUs {offline_set - all_cpus} do not exist")
    infos: dict[int, CpuInfo] = {}
    for core, ids in zip(cores, cpu_ids, strict=True):
        for cpu in ids:
            if cpu in offline_set:
                continue
            infos[cpu] = CpuInfo(
                cpu=cpu,
                socket=core.socket,
                die=core.die,
                core_id=core.core_id,
                numa=core.numa,
                cluster=core.cluster,
                l2=core.l2,
                l3=core.l3,
                core_type=core.core_type,
            )

    memoryless = set(memoryless_nodes)
    numa_nodes: list[NumaNode] = []
    total_nodes = num_numa + cpuless_nodes
    for node in range(total_nodes):
        cpus = CpuSet.of(c for c, i in infos.items() if i.numa == node)
        has_memory = node not in memoryless
        numa_nodes.append(
            NumaNode(
                id=node,
                cpus=cpus,
                has_memory=has_memory,
                distances=tuple(
                    _distance(a=node, b=other, num_numa=num_numa, nps=numa_per_socket)
                    for other in range(total_nodes)
                ),
                memory_kib=memory_kib_per_node if has_memory else 0,
            )
        )

    pcie: dict[str, CpuSet] = {}
    total_roots = sockets * pcie_roots_per_socket
    for socket in range(sockets):
        first_node = socket * numa_per_socket
        for index in range(pcie_roots_per_socket):
            # Spread root buses over 0x00-0xff as firmware does (2 sockets x 2: 00 40 80 c0).
            bus = (socket * pcie_roots_per_socket + index) * (256 // total_roots)
            pcie[f"pci0000:{bus:02x}"] = numa_nodes[first_node].cpus

    if smt_control == "":
        smt_control = "on" if threads > 1 else "notsupported"
    return Topology(
        cpus=infos,
        numa_nodes=tuple(numa_nodes),
        offline=offline_set,
        present=all_cpus,
        isolated=CpuSet.of(isolated),
        smt_control=smt_control,
        pcie_roots=dict(sorted(pcie.items())),
    )


def _layout_cores(
    sockets: int,
    numa_per_socket: int,
    per_numa: Sequence[int],
    threads: int,
    hybrid: bool | int,
    l3_per: L3Per,
    dies_per_socket: int,
    cluster_size: int | None = None,
) -> list[_Core]:
    cores: list[_Core] = []
    hybrid_machine = hybrid is True or (not isinstance(hybrid, bool) and hybrid > 0)
    l3_next = 0
    l3_of_key: dict[tuple[int, ...], int] = {}
    e_group_next = 0
    l2_next = 0
    cluster_next = 0
    for socket in range(sockets):
        socket_cores = sum(per_numa[socket * numa_per_socket : (socket + 1) * numa_per_socket])
        die_size = -(-socket_cores // dies_per_socket)
        core_id = 0
        for local_numa in range(numa_per_socket):
            numa = socket * numa_per_socket + local_numa
            count = per_numa[numa]
            if isinstance(hybrid, bool):
                e_cores = count // 2 if hybrid else 0
            else:
                e_cores = min(max(hybrid, 0), count - 1) if count > 1 else 0
            first_e = count - e_cores
            for index in range(count):
                die = core_id // die_size
                is_e = index >= first_e
                core_type = CoreType.STANDARD
                if hybrid_machine:
                    core_type = CoreType.EFFICIENCY if is_e else CoreType.PERFORMANCE
                l3_key: tuple[int, ...] | None
                if l3_per == "socket":
                    l3_key = (socket,)
                elif l3_per == "numa":
                    l3_key = (numa,)
                elif l3_per == "die":
                    l3_key = (socket, die)
                elif l3_per == "none":
                    l3_key = None
                else:
                    l3_key = (numa, -1, index // max(int(l3_per), 1))
                l3: int | None = None
                if l3_key is not None:
                    if l3_key not in l3_of_key:
                        l3_of_key[l3_key] = l3_next
                        l3_next += 1
                    l3 = l3_of_key[l3_key]
                if is_e:
                    e_index = index - first_e
                    if e_index % 4 == 0:
                        e_group = e_group_next
                        e_group_next += 1
                        l2_next += 1
                    l2 = l2_next - 1
                    cluster: int | None = 1000 + e_group
                else:
                    l2 = l2_next
                    l2_next += 1
                    cluster = None
                    if cluster_size:
                        if index % cluster_size == 0:
                            cluster_next += 1
                        cluster = cluster_next - 1
                cores.append(
                    _Core(
                        socket=socket,
                        die=die,
                        core_id=core_id,
                        numa=numa,
                        threads=1 if is_e else threads,
                        core_type=core_type,
                        l2=l2,
                        l3=l3,
                        cluster=cluster,
                    )
                )
                core_id += 1
    if not any(c.core_type is CoreType.EFFICIENCY for c in cores):
        # Asked for hybrid but every node was too small for an E-core: a plain machine.
        cores = [dataclasses.replace(c, core_type=CoreType.STANDARD) for c in cores]
    return cores


def _number_cpus(cores: Sequence[_Core], layout: SiblingLayout) -> list[list[int]]:
    ids: list[list[int]] = [[] for _ in cores]
    next_cpu = 0
    if layout == "adjacent":
        for index, core in enumerate(cores):
            ids[index] = list(range(next_cpu, next_cpu + core.threads))
            next_cpu += core.threads
        return ids
    for thread in range(max(c.threads for c in cores)):
        for index, core in enumerate(cores):
            if thread < core.threads:
                ids[index].append(next_cpu)
                next_cpu += 1
    return ids


def _distance(*, a: int, b: int, num_numa: int, nps: int) -> int:
    if a == b:
        return 10
    if a >= num_numa or b >= num_numa:
        cpu_node = b if a >= num_numa else a
        if a >= num_numa and b >= num_numa:
            return 28
        # A memory-only node hangs off the socket numbered (its index - num_numa) mod sockets.
        mem_node = a if a >= num_numa else b
        sockets = num_numa // nps
        return 17 if cpu_node // nps == (mem_node - num_numa) % sockets else 28
    return 12 if a // nps == b // nps else 21


def synthetic_512() -> Topology:
    """2 sockets x 4 NUMA nodes x 32 cores x SMT-2: 512 CPUs, 8 NUMA nodes, L3 per NUMA."""
    return make_topology(sockets=2, numa_per_socket=4, cores_per_numa=32, threads=2, l3_per="numa")


NAMED_MACHINES: dict[str, Callable[[], Topology]] = {
    "synthetic-512": synthetic_512,
    # 2 sockets x 2 SNC nodes x 10 cores x SMT-2; one L3 per socket spans both its nodes.
    "snc-2x2x10": lambda: make_topology(2, 2, 10, 2, l3_per="socket"),
    # Desktop hybrids, P-core siblings adjacent as Intel numbers them: 8 SMT-2 P-cores + 8
    # E-cores (CPUs 0-15 P, 16-23 E), and 4 P + 8 E (CPUs 0-7 P, 8-15 E).
    "hybrid-8p8e": lambda: make_topology(1, 1, 16, 2, hybrid=8, sibling_layout="adjacent"),
    "hybrid-4p8e": lambda: make_topology(1, 1, 12, 2, hybrid=8, sibling_layout="adjacent"),
    # AMD-like: 1 socket, 1 node, 6 cores, SMT-2, two CCXs of 3 cores each.
    "ccx-1x6": lambda: make_topology(1, 1, 6, 2, l3_per=3, sibling_layout="adjacent"),
    # 4-way SMT (POWER-like), 2 sockets x 1 node x 8 cores.
    "smt4-2x8": lambda: make_topology(2, 1, 8, 4, sibling_layout="adjacent"),
}


@st.composite
def topologies(
    draw: st.DrawFn,
    *,
    max_cpus: int = 256,
    max_sockets: int = 8,
    max_numa_per_socket: int = 4,
    smt: Sequence[int] = (1, 2, 4),
    allow_offline: bool = True,
    allow_hybrid: bool = True,
    allow_uneven: bool = True,
) -> Topology:
    """Hypothesis strategy of ``Topology`` objects; see the module docstring."""
    threads = draw(st.sampled_from(list(smt)))
    sockets = draw(st.integers(1, max(1, min(max_sockets, max_cpus // threads))))
    nps = draw(st.integers(1, max(1, min(max_numa_per_socket, max_cpus // (threads * sockets)))))
    num_numa = sockets * nps
    max_cores = max(1, min(16, max_cpus // (threads * num_numa)))
    per_numa: int | list[int]
    if allow_uneven and draw(st.booleans()):
        per_numa = draw(st.lists(st.integers(1, max_cores), min_size=num_numa, max_size=num_numa))
    else:
        per_numa = draw(st.integers(1, max_cores))
    hybrid: bool | int = False
    if allow_hybrid and draw(st.integers(0, 4)) == 0:
        hybrid = draw(st.one_of(st.just(True), st.integers(1, max_cores)))
    l3_per: L3Per = draw(
        st.one_of(
            st.sampled_from(["socket", "numa", "die", "none"]),
            st.integers(1, max_cores),
        )
    )
    layout: SiblingLayout = draw(st.sampled_from(["spread", "adjacent"]))
    dies = draw(st.sampled_from([1, 1, 1, 2]))
    base = make_topology(
        sockets,
        nps,
        per_numa,
        threads,
        hybrid=hybrid,
        l3_per=l3_per,
        dies_per_socket=dies,
        sibling_layout=layout,
    )
    if not allow_offline or not draw(st.booleans()):
        return base
    candidates = base.online.to_list()
    offline = draw(
        st.lists(st.sampled_from(candidates), max_size=max(0, len(candidates) - 1), unique=True)
    )
    if not offline:
        return base
    return make_topology(
        sockets,
        nps,
        per_numa,
        threads,
        offline=offline,
        hybrid=hybrid,
        l3_per=l3_per,
        dies_per_socket=dies,
        sibling_layout=layout,
    )


def cpu_subsets(cpus: CpuSet) -> st.SearchStrategy[CpuSet]:
    """Subsets of ``cpus`` (e.g. free sets of a topology's online CPUs), shrinking to empty."""
    ids = cpus.to_list()
    if not ids:
        return st.just(CpuSet())
    return st.one_of(
        st.just(cpus),
        st.lists(st.sampled_from(ids), unique=True).map(CpuSet.of),
        st.lists(st.booleans(), min_size=len(ids), max_size=len(ids)).map(
            lambda bits: CpuSet.of(c for c, keep in zip(ids, bits, strict=True) if keep)
        ),
    )
