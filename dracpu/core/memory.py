"""The memory and hugepage model of a node, per NUMA node, for the ``dra.memory`` driver.

Plain values read by :mod:`dracpu.sysfs_memory` and consumed by the slice model
(:mod:`dracpu.core.memory_slices`) and the prepare logic (:mod:`dracpu.core.memory_prepare`).

Counting rule: a NUMA node's ``MemTotal`` includes the pages sitting in its hugepage pools, so
the memory a ``dra.memory`` device offers is ``MemTotal`` minus the persistent hugepages of
every size on that node. Upstream counts those bytes twice (once as memory, once as hugepages).
Surplus hugepages (overcommitted on demand, returned when freed) are transient and stay counted
as memory.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dracpu.core.cpuset import CpuSet

__all__ = [
    "DRIVER",
    "GIB",
    "KIB",
    "MIB",
    "HugePagePool",
    "MemoryKind",
    "MemoryNode",
    "MemoryResource",
    "MemoryTopology",
    "size_string",
]

DRIVER = "dra.memory"
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
_UNITS = ((2**60, "Ei"), (2**50, "Pi"), (2**40, "Ti"), (GIB, "Gi"), (MIB, "Mi"), (KIB, "Ki"))


def size_string(n: int) -> str:
    """Upstream's short page-size form: the largest binary unit dividing ``n`` (``"2Mi"``)."""
    for unit, suffix in _UNITS:
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return f"{n}B"


class MemoryKind(enum.StrEnum):
    """Ordinary pages, or a hugetlb pool of one page size."""

    MEMORY = "memory"
    HUGEPAGES = "hugepages"


@dataclass(frozen=True, slots=True)
class MemoryResource:
    """One kind of memory: ordinary memory (its base page size) or hugepages of one size.

    ``name`` is upstream's resource name (``memory``, ``hugepages-2Mi``); it keys the CDI env
    variables. ``sort_key`` puts memory first, then hugepages by page size.
    """

    kind: MemoryKind
    page_size: int

    @classmethod
    def memory(cls, page_size: int = 4 * KIB) -> MemoryResource:
        """Ordinary memory with the given base page size."""
        return cls(MemoryKind.MEMORY, page_size)

    @classmethod
    def hugepages(cls, page_size: int) -> MemoryResource:
        """Hugepages of one size (bytes)."""
        return cls(MemoryKind.HUGEPAGES, page_size)

    @property
    def sort_key(self) -> tuple[bool, int]:
        """Memory first, then hugepages by page size."""
        return (self.hugetlb, self.page_size)

    @property
    def hugetlb(self) -> bool:
        """True for hugepages (the ``resource.kubernetes.io/hugeTLB`` attribute)."""
        return self.kind is MemoryKind.HUGEPAGES

    @property
    def page_size_string(self) -> str:
        """``4Ki``, ``2Mi``, ``1Gi``: the ``resource.kubernetes.io/pageSize`` attribute."""
        return size_string(self.page_size)

    @property
    def name(self) -> str:
        """``memory`` or ``hugepages-<size>`` (``hugepages-2Mi``), as upstream."""
        if self.kind is MemoryKind.MEMORY:
            return "memory"
        return f"hugepages-{self.page_size_string}"

    @property
    def device_prefix(self) -> str:
        """Lower-case device name prefix: ``memory``, ``hugepages-2mi``."""
        return self.name.lower()

    @property
    def device_class(self) -> str:
        """``dra.memory``, ``dra.hugepages-2m``, ``dra.hugepages-1g`` (upstream's names)."""
        if self.kind is MemoryKind.MEMORY:
            return "dra.memory"
        return "dra.hugepages-" + self.page_size_string.removesuffix("i").lower()

    @property
    def minimum_request(self) -> int:
        """The request policy's default: one hugepage, or 1 MiB of memory (as upstream)."""
        return self.page_size if self.hugetlb else MIB


@dataclass(frozen=True, slots=True)
class HugePagePool:
    """One node's pool of one page size, from ``hugepages-<kB>kB/{nr,free,surplus}_hugepages``."""

    page_size: int
    total: int
    free: int = 0
    surplus: int = 0

    @property
    def persistent(self) -> int:
        """Pages that stay in the pool: ``nr_hugepages`` minus surplus (what devices offer)."""
        return max(0, self.total - self.surplus)

    @property
    def persistent_bytes(self) -> int:
        """Bytes held by the persistent pages."""
        return self.persistent * self.page_size


@dataclass(frozen=True, slots=True)
class MemoryNode:
    """A NUMA node's memory. ``cpus`` is empty on memory-only nodes (CXL, HBM)."""

    id: int
    total_bytes: int
    free_bytes: int | None = None
    hugepages: tuple[HugePagePool, ...] = ()
    cpus: CpuSet = CpuSet()  # noqa: RUF009 (immutable value)

    @property
    def hugepage_bytes(self) -> int:
        """Bytes in this node's persistent hugepage pools, all sizes."""
        return sum(pool.persistent_bytes for pool in self.hugepages)

    @property
    def memory_bytes(self) -> int:
        """Ordinary memory: ``MemTotal`` minus the persistent hugepages (never counted twice)."""
        return max(0, self.total_bytes - self.hugepage_bytes)

    @property
    def memory_only(self) -> bool:
        """True for a node with memory but no CPUs."""
        return not self.cpus

    def pool(self, page_size: int) -> HugePagePool | None:
        """This node's pool of ``page_size`` bytes, if the kernel has one."""
        for pool in self.hugepages:
            if pool.page_size == page_size:
                return pool
        return None


@dataclass(frozen=True, slots=True)
class MemoryTopology:
    """Every NUMA node's memory, in id order, plus the machine's base and huge page sizes."""

    nodes: tuple[MemoryNode, ...]
    page_size: int = 4 * KIB
    hugepage_sizes: tuple[int, ...] = ()
    """Sizes the kernel supports (``kernel/mm/hugepages``), even with no page provisioned."""

    def node(self, node_id: int) -> MemoryNode | None:
        """The node with this id, if any."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        return None

    @property
    def resources(self) -> tuple[MemoryResource, ...]:
        """Memory plus one resource per supported hugepage size, sorted."""
        sizes = set(self.hugepage_sizes)
        for node in self.nodes:
            sizes.update(pool.page_size for pool in node.hugepages)
        return (
            MemoryResource.memory(self.page_size),
            *(MemoryResource.hugepages(size) for size in sorted(sizes)),
        )
