"""Memory placement of a container: ``cpuset.mems`` and hugetlb limits, from the node state (pure).

The CPU policy (:mod:`dracpu.core.pinning`) decides a container's CPUs; this module adds its
memory, from the same env the container carries:

- A container whose env has ``DRAMEMORY_<uid>_NUMANodes=<N>[,<N>...]`` (the CDI env of
  :func:`dracpu.core.memory_prepare.memory_env`) for ``dra.memory`` claims prepared on this node
  gets ``cpuset.mems`` = the union of those claims' NUMA nodes, and one hugetlb limit per page
  size the node publishes: the bytes its claims hold of that size, 0 for the others (as the
  kubelet limits every supported size). The env must agree with the prepared claim.
- A container without memory claims keeps the node's default mems (nothing is set), unless the
  node binds memory to CPUs (``--bind-memory-to-cpus``): then a container with exclusive CPUs
  gets the NUMA nodes of those CPUs as its mems. Hugetlb limits are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dracpu.core.cpuset import CpuSet
from dracpu.core.memory_prepare import ENV_PREFIX

if TYPE_CHECKING:
    from dracpu.core.node import NodeState
    from dracpu.core.pinning import ContainerInfo

__all__ = [
    "ContainerMemory",
    "MemoryRejected",
    "hugetlb_size_name",
    "memory_claims_in_env",
    "memory_of",
]

_NUMA_SUFFIX = "_NUMANodes"


@dataclass(frozen=True, slots=True)
class ContainerMemory:
    """What to set besides the cpuset: ``mems`` (empty: leave the default) and hugetlb limits
    as (page size in bytes, limit in bytes), sorted by page size (empty: leave them)."""

    mems: tuple[int, ...] = ()
    hugepage_limits: tuple[tuple[int, int], ...] = ()
    claims: tuple[str, ...] = ()

    @property
    def mems_text(self) -> str:
        """``cpuset.mems`` in the kernel's list format; empty when nothing is set."""
        return str(CpuSet.of(self.mems)) if self.mems else ""


@dataclass(frozen=True, slots=True)
class MemoryRejected:
    """The container's memory env cannot be honoured; ``reason`` names the variable."""

    reason: str


def hugetlb_size_name(page_size: int) -> str:
    """The page size as cgroup hugetlb files and OCI ``hugepageLimits`` spell it: 2MB, 1GB."""
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if page_size >= factor and page_size % factor == 0:
            return f"{page_size // factor}{unit}"
    return f"{page_size}B"


def memory_claims_in_env(env: tuple[str, ...]) -> dict[str, tuple[int, ...] | None]:
    """Claim UID → NUMA nodes named by each ``DRAMEMORY_<uid>_NUMANodes`` entry (None when the
    value does not parse)."""
    out: dict[str, tuple[int, ...] | None] = {}
    head = f"{ENV_PREFIX}_"
    for entry in env:
        name, sep, value = entry.partition("=")
        if not sep or not name.startswith(head) or not name.endswith(_NUMA_SUFFIX):
            continue
        uid = name[len(head) : -len(_NUMA_SUFFIX)]
        if not uid:
            continue
        parts = [p.strip() for p in value.split(",")] if value else []
        if parts and all(p.isdigit() for p in parts):
            out[uid] = tuple(sorted({int(p) for p in parts}))
        else:
            out[uid] = None
    return out


def memory_of(
    state: NodeState, container: ContainerInfo, exclusive_cpus: CpuSet | None
) -> ContainerMemory | MemoryRejected:
    """The memory placement of ``container`` (module docs); never raises on bad input.

    ``exclusive_cpus`` are the CPUs the CPU policy pinned it to, None for a shared container.
    """
    named = memory_claims_in_env(container.env)
    if not named:
        if state.config.bind_memory_to_cpus and exclusive_cpus:
            local = {
                state.topology.cpus[c].numa for c in exclusive_cpus if c in state.topology.cpus
            }
            return ContainerMemory(mems=tuple(sorted(local)))
        return ContainerMemory()
    mems: set[int] = set()
    limits = {d.resource.page_size: 0 for d in state.config.memory_devices if d.resource.hugetlb}
    for uid, nodes in sorted(named.items()):
        variable = f"{ENV_PREFIX}_{uid}{_NUMA_SUFFIX}"
        assignment = state.memory.get(uid)
        if assignment is None:
            return MemoryRejected(
                f"{container}: env {variable} names memory claim {uid}, which is not prepared "
                "on this node"
            )
        if nodes is None:
            return MemoryRejected(f"{container}: env {variable} is not a NUMA node list")
        if nodes != assignment.numa_nodes:
            return MemoryRejected(
                f"{container}: env {variable} names NUMA nodes {nodes} but claim {uid} is "
                f"prepared on {assignment.numa_nodes}"
            )
        mems.update(assignment.numa_nodes)
        for size, amount in assignment.hugepage_limits.items():
            limits[size] = limits.get(size, 0) + amount
    return ContainerMemory(
        mems=tuple(sorted(mems)),
        hugepage_limits=tuple(sorted(limits.items())),
        claims=tuple(sorted(named)),
    )
