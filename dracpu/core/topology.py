"""The CPU topology of one node as plain, immutable data with set-returning queries.

Built by the sysfs reader (or by tests and generators) from per-CPU facts. Cores are keyed by
``(package, die, core_id)`` because sysfs ``core_id`` repeats on every socket and die; grouping by
``core_id`` alone merges unrelated cores on multi-socket machines.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from dracpu.core.cpuset import CpuSet
from dracpu.errors import TopologyError

K = TypeVar("K")

EMPTY = CpuSet()

CoreKey = tuple[int, int, int]
"""Machine-unique identity of a physical core: (package, die, sysfs core_id)."""


class CoreType(enum.StrEnum):
    """Kind of core, as the ``dra.cpu/coreType`` attribute spells it."""

    STANDARD = "standard"
    PERFORMANCE = "p-core"
    EFFICIENCY = "e-core"


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """Everything known about one online logical CPU."""

    cpu: int
    socket: int
    die: int
    core_id: int
    numa: int
    cluster: int | None = None
    l2: int | None = None
    l3: int | None = None
    core_type: CoreType = CoreType.STANDARD
    base_freq_khz: int | None = None
    """Base (guaranteed, non-turbo) frequency in kHz, from cpufreq; ``None`` when unknown."""
    max_freq_khz: int | None = None
    """Highest frequency the CPU can run at (turbo included) in kHz, from cpufreq."""

    @property
    def core_key(self) -> CoreKey:
        """The machine-unique core identity (package, die, core_id)."""
        return (self.socket, self.die, self.core_id)


@dataclass(frozen=True, slots=True)
class NumaNode:
    """A NUMA node; it may have no CPUs (memory-only) or no memory (CPU-only)."""

    id: int
    cpus: CpuSet
    has_memory: bool
    distances: tuple[int, ...] = ()
    memory_kib: int | None = None


@dataclass(frozen=True, slots=True)
class Topology:
    """A node's CPUs, grouped by every level the allocator and slice model care about.

    ``cpus`` covers online CPUs only. Offline CPUs appear only in ``offline``; ``present`` is
    what the kernel reports (or the online set on kernels without that file).
    """

    cpus: Mapping[int, CpuInfo]
    numa_nodes: tuple[NumaNode, ...] = ()
    offline: CpuSet = EMPTY
    present: CpuSet = EMPTY
    isolated: CpuSet = EMPTY
    smt_control: str | None = None
    pcie_roots: Mapping[str, CpuSet] = field(default_factory=dict)
    # Indexes derived in __post_init__.
    online: CpuSet = field(init=False)
    cores: Mapping[CoreKey, CpuSet] = field(init=False)
    core_of: Mapping[int, CoreKey] = field(init=False)
    sockets: Mapping[int, CpuSet] = field(init=False)
    dies: Mapping[tuple[int, int], CpuSet] = field(init=False)
    numas: Mapping[int, CpuSet] = field(init=False)
    l3_groups: Mapping[int, CpuSet] = field(init=False)
    l2_groups: Mapping[int, CpuSet] = field(init=False)
    threads_per_core: int = field(init=False)
    """The widest core's online thread count (1, 2, 4, …); 0 when there are no CPUs."""
    derived: dict[str, object] = field(init=False, compare=False, repr=False)
    """Memo of indexes other pure modules derive from this topology (e.g. the allocator's)."""

    def __post_init__(self) -> None:
        _set(self, "derived", {})
        for key, info in self.cpus.items():
            if key != info.cpu:
                raise TopologyError(f"CPU map key {key} holds the facts of CPU {info.cpu}")
        ordered = sorted(self.cpus.values(), key=lambda i: i.cpu)
        _set(self, "cpus", {i.cpu: i for i in ordered})
        _set(self, "online", CpuSet.of(i.cpu for i in ordered))
        if not self.present:
            _set(self, "present", self.online | self.offline)
        _set(self, "cores", _group(ordered, lambda i: i.core_key))
        _set(self, "core_of", {i.cpu: i.core_key for i in ordered})
        _set(self, "threads_per_core", max((len(c) for c in self.cores.values()), default=0))
        _set(self, "sockets", _group(ordered, lambda i: i.socket))
        _set(self, "dies", _group(ordered, lambda i: (i.socket, i.die)))
        _set(self, "numas", _group(ordered, lambda i: i.numa))
        _set(self, "l3_groups", _group_optional(ordered, lambda i: i.l3))
        _set(self, "l2_groups", _group_optional(ordered, lambda i: i.l2))

    # Queries, named <things>_in_<containers>.

    def cpus_in_cores(self, keys: Iterable[CoreKey]) -> CpuSet:
        """Online CPUs of the given cores."""
        return _union(self.cores[k] for k in keys)

    def cpus_in_numa_nodes(self, ids: Iterable[int]) -> CpuSet:
        """Online CPUs of the given NUMA nodes."""
        return _union(self.numas.get(i, CpuSet()) for i in ids)

    def cpus_in_sockets(self, ids: Iterable[int]) -> CpuSet:
        """Online CPUs of the given sockets."""
        return _union(self.sockets.get(i, CpuSet()) for i in ids)

    def siblings_of(self, cpu: int) -> CpuSet:
        """The online SMT siblings of ``cpu``, itself included."""
        return self.cores[self.core_of[cpu]]

    def local_memory_of(self, numa: int) -> int | None:
        """The NUMA node whose memory is nearest to the CPUs of node ``numa``: the node itself
        when it has memory, else the memory node at the smallest distance (then lowest id);
        ``None`` when no node has memory. Without node facts the node is its own memory.
        """
        nodes = {n.id: n for n in self.numa_nodes}
        node = nodes.get(numa)
        if node is None:
            return None if nodes else numa
        if node.has_memory:
            return numa
        # A node's distance row lists every node in ascending id order.
        position = {nid: i for i, nid in enumerate(sorted(nodes))}

        def distance(other: NumaNode) -> tuple[int, int]:
            i = position[other.id]
            far = node.distances[i] if i < len(node.distances) else 1 << 30
            return (far, other.id)

        with_memory = [n for n in nodes.values() if n.has_memory]
        return min(with_memory, key=distance).id if with_memory else None

    def numa_nodes_in_sockets(self, ids: Iterable[int]) -> set[int]:
        """NUMA nodes that hold online CPUs of the given sockets."""
        wanted = set(ids)
        return {i.numa for i in self.cpus.values() if i.socket in wanted}

    # Counts and flags.

    @property
    def num_cpus(self) -> int:
        """Online logical CPUs."""
        return len(self.cpus)

    @property
    def num_cores(self) -> int:
        """Physical cores with at least one online CPU."""
        return len(self.cores)

    @property
    def uniform_threads_per_core(self) -> int | None:
        """The thread count every core shares, or ``None`` when cores differ (hybrid, offlined)."""
        widths = {len(c) for c in self.cores.values()}
        return widths.pop() if len(widths) == 1 else None

    @property
    def smt_enabled(self) -> bool:
        """True when some core runs more than one online thread."""
        return self.threads_per_core > 1

    @property
    def is_hybrid(self) -> bool:
        """True when the node mixes performance and efficiency cores."""
        return any(i.core_type is not CoreType.STANDARD for i in self.cpus.values())

    def machine_core_id(self, cpu: int) -> int:
        """A machine-unique core number for ``cpu``: the lowest CPU id of its core."""
        return self.siblings_of(cpu).first()

    def cpus_of_type(self, core_type: CoreType) -> CpuSet:
        """Online CPUs of one core type."""
        return CpuSet.of(i.cpu for i in self.cpus.values() if i.core_type is core_type)


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def _union(sets: Iterable[CpuSet]) -> CpuSet:
    mask = 0
    for s in sets:
        mask |= s.mask
    return CpuSet(mask)


def _group(infos: Iterable[CpuInfo], key: Callable[[CpuInfo], K]) -> dict[K, CpuSet]:
    masks: dict[K, int] = {}
    for info in infos:
        k = key(info)
        masks[k] = masks.get(k, 0) | 1 << info.cpu
    return {k: CpuSet(m) for k, m in sorted(masks.items(), key=lambda kv: kv[1] & -kv[1])}


def _group_optional(
    infos: Iterable[CpuInfo], key: Callable[[CpuInfo], int | None]
) -> dict[int, CpuSet]:
    groups = _group(infos, key)
    return {k: v for k, v in groups.items() if k is not None}
