"""Choose CPUs for a claim: topology + available CPUs + count + options → a CpuSet, or an error.

Behaves like the kubelet CPU Manager's static policy in packed mode, written from its behaviour:

1. whole free groups of the larger of socket / NUMA node, then of the other, then whole L3
   (uncore) groups, each while the request is at least a group's size, most-used domain first;
2. the remainder goes to the tightest domain that can hold it without giving up whole cores
   (best fit: the fewest free CPUs first), descending socket → NUMA → L3;
3. inside it, whole free cores, then single CPUs from the most-used cores.

"Most-used first" keeps free space contiguous for later, larger claims. Cores are keyed by
(package, die, core_id), so multi-socket machines, 1/2/4-way SMT, hybrid parts and unevenly
offlined CPUs are handled without assuming a fixed number of threads per core.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from dracpu.core.cpuset import CpuSet
from dracpu.core.topology import Topology
from dracpu.errors import AllocationError


class Strategy(enum.StrEnum):
    """How CPUs are laid out inside the chosen domain."""

    PACKED = "packed"
    """Fill whole cores (SMT siblings together), most-used domain first."""
    SPREAD = "spread"
    """One thread per core first, then siblings: fewer tasks share a core's pipeline."""


@dataclass(frozen=True, slots=True)
class AllocationOptions:
    """Policy knobs, named after the kubelet static policy options they mirror."""

    full_pcpus_only: bool = False
    distribute_across_numa: bool = False
    strategy: Strategy = Strategy.PACKED


def allocate(
    topology: Topology,
    available: CpuSet,
    count: int,
    options: AllocationOptions = AllocationOptions(),
) -> CpuSet:
    """Return exactly ``count`` CPUs out of ``available`` (∩ online), or raise AllocationError.

    Deterministic: the same inputs always give the same set.
    """
    if count <= 0:
        raise AllocationError(f"requested {count} CPUs: the count must be positive")
    ctx = _Context(topology, available & topology.online)
    if count > len(ctx.free):
        raise AllocationError(
            f"requested {count} CPUs but only {len(ctx.free)} are available ({ctx.free or 'none'})"
        )
    free = ctx.free
    if options.full_pcpus_only:
        free = ctx.whole_cores_in(free)
        _check_full_pcpus(ctx, free, count)
    if options.distribute_across_numa and len(topology.numas) > 1:
        return _distribute_across_numa(ctx, free, count, options)
    return _take(ctx, free, count, options.strategy)


def _check_full_pcpus(ctx: _Context, whole_free: CpuSet, count: int) -> None:
    width = ctx.topology.uniform_threads_per_core
    if width is not None and count % width:
        raise AllocationError(
            f"full-pcpus-only: {count} CPUs is not a multiple of the {width} threads per core"
        )
    if ctx.whole_capacity(whole_free, count) != count:
        raise AllocationError(
            f"full-pcpus-only: {count} CPUs cannot be made of whole free cores "
            f"({len(whole_free)} CPUs are in whole free cores: {whole_free or 'none'})"
        )


class _Context:
    """Per-request view of the topology: domain levels, free-count keys, core helpers."""

    def __init__(self, topology: Topology, free: CpuSet) -> None:
        self.topology = topology
        self.free = free
        sockets = list(topology.sockets.values())
        numas = list(topology.numas.values())
        larger_first = [sockets, numas]
        if max(map(len, numas), default=0) > max(map(len, sockets), default=0):
            larger_first.reverse()
        self.levels: list[list[CpuSet]] = [*larger_first, list(topology.l3_groups.values())]
        self.levels = [level for level in self.levels if len(level) > 0]
        self.cores: list[CpuSet] = list(topology.cores.values())
        # For each level, the group index of every CPU: the key of "most-used domain first".
        self._group_of: list[dict[int, int]] = []
        for level in self.levels:
            index: dict[int, int] = {}
            for i, group in enumerate(level):
                for cpu in group:
                    index[cpu] = i
            self._group_of.append(index)

    def pack_key(self, cpus: CpuSet, free: CpuSet) -> tuple[int, ...]:
        """Sort key: fewer free CPUs in each enclosing domain first, then the lowest CPU."""
        first = cpus.first()
        key = []
        for level, index in zip(self.levels, self._group_of, strict=True):
            group = index.get(first)
            key.append(len(level[group] & free) if group is not None else 0)
        key.append(first)
        return tuple(key)

    def whole_cores_in(self, cpus: CpuSet) -> CpuSet:
        """CPUs of the cores that lie entirely inside ``cpus``."""
        mask = 0
        for core in self.cores:
            if core <= cpus:
                mask |= core.mask
        return CpuSet(mask)

    def free_cores(self, scope: CpuSet) -> list[CpuSet]:
        """Cores lying entirely inside ``scope``."""
        return [core for core in self.cores if core <= scope]

    def whole_capacity(self, scope: CpuSet, count: int) -> int:
        """Most CPUs, up to ``count``, that whole cores inside ``scope`` can make up.

        Greedy by core size, which is exact for the 1/2/4-thread sizes real machines have.
        """
        total = 0
        for size in sorted((len(c) for c in self.free_cores(scope)), reverse=True):
            if total + size <= count:
                total += size
                if total == count:
                    break
        return total


def _take(ctx: _Context, free: CpuSet, count: int, strategy: Strategy) -> CpuSet:
    """Take ``count`` CPUs out of ``free`` (which holds at least that many)."""
    taken = CpuSet()
    # 1. Whole free domains, larger levels first, while the request covers a whole one.
    for level in ctx.levels:
        while count > 0:
            candidates = [g for g in level if len(g) <= count and g <= free]
            if not candidates:
                break
            group = min(candidates, key=lambda g: ctx.pack_key(g, free))
            taken, free, count = taken | group, free - group, count - len(group)
    if count == 0:
        return taken
    # 2. The tightest domain that holds the rest without losing whole cores.
    scope = _best_fit_scope(ctx, free, count)
    # 3. Cores and threads inside it.
    if strategy is Strategy.SPREAD:
        return taken | _pick_spread(ctx, scope, count)
    return taken | _pick_packed(ctx, scope, count)


def _best_fit_scope(ctx: _Context, free: CpuSet, count: int) -> CpuSet:
    scope = free
    target = ctx.whole_capacity(scope, count)
    for level in ctx.levels:
        fitting = []
        for group in level:
            part = group & scope
            if len(part) >= count and ctx.whole_capacity(part, count) == target:
                fitting.append(part)
        if fitting:
            scope = min(fitting, key=lambda p: (len(p), ctx.pack_key(p, free)))
    return scope


def _pick_packed(ctx: _Context, scope: CpuSet, count: int) -> CpuSet:
    """Whole cores (largest first, most-used first), then threads of the most-used cores."""
    taken = 0
    cores = sorted(ctx.free_cores(scope), key=lambda c: (-len(c), ctx.pack_key(c, scope)))
    for core in cores:
        if len(core) <= count:
            taken |= core.mask
            count -= len(core)
            if count == 0:
                return CpuSet(taken)
    rest = scope - CpuSet(taken)
    for cpu in _threads_most_used_first(ctx, rest)[:count]:
        taken |= 1 << cpu
    return CpuSet(taken)


def _pick_spread(ctx: _Context, scope: CpuSet, count: int) -> CpuSet:
    """One thread from each core in turn (idlest cores first), then the next thread of each."""
    by_core: list[list[int]] = []
    for core in ctx.cores:
        threads = (core & scope).to_list()
        if threads:
            by_core.append(threads)
    by_core.sort(key=lambda t: (-len(t), ctx.pack_key(CpuSet.of(t), scope)))
    order = [cpu for round_ in itertools.zip_longest(*by_core) for cpu in round_ if cpu is not None]
    return CpuSet.of(order[:count])


def _threads_most_used_first(ctx: _Context, cpus: CpuSet) -> Sequence[int]:
    """CPUs of the cores with the fewest free threads first, then most-used domain first."""
    topo = ctx.topology

    def key(cpu: int) -> tuple[int, tuple[int, ...]]:
        return (len(topo.siblings_of(cpu) & cpus), ctx.pack_key(CpuSet.of([cpu]), cpus))

    return sorted(cpus, key=key)


def _distribute_across_numa(
    ctx: _Context, free: CpuSet, count: int, options: AllocationOptions
) -> CpuSet:
    """Split evenly, in groups of threads-per-core, over the fewest NUMA nodes that fit."""
    nodes = [(nid, cpus & free) for nid, cpus in ctx.topology.numas.items()]
    nodes = [(nid, part) for nid, part in nodes if part]
    group = max(ctx.topology.threads_per_core, 1)
    distances = {n.id: n.distances for n in ctx.topology.numa_nodes}
    for k in range(1, len(nodes) + 1):
        best: tuple[tuple[float, int, tuple[int, ...]], list[tuple[CpuSet, int]]] | None = None
        for combo in itertools.combinations(nodes, k):
            for shares in _even_shares(count, k, group):
                plan = list(zip((part for _, part in combo), shares, strict=True))
                if not all(_fits(ctx, part, share, options) for part, share in plan):
                    continue
                after = {nid: len(part) for nid, part in nodes}
                for (nid, _), share in zip(combo, shares, strict=True):
                    after[nid] -= share
                score = (
                    _variance(list(after.values())),
                    _spread_distance([nid for nid, _ in combo], distances),
                    tuple(nid for nid, _ in combo),
                )
                if best is None or score < best[0]:
                    best = (score, plan)
        if best is not None:
            taken = CpuSet()
            for part, share in best[1]:
                if share:
                    taken = taken | _take(ctx, part, share, options.strategy)
            return taken
    raise AllocationError(
        f"distribute-across-numa: {count} CPUs cannot be split evenly over the NUMA nodes' "
        f"free CPUs ({', '.join(f'node {nid}: {len(part)}' for nid, part in nodes)})"
    )


def _even_shares(count: int, k: int, group: int) -> list[tuple[int, ...]]:
    """Every way to split ``count`` over ``k`` nodes as evenly as groups of ``group`` allow."""
    groups, leftover = divmod(count, group)
    base, extra = divmod(groups, k)
    options: set[tuple[int, ...]] = set()
    for extra_nodes in itertools.combinations(range(k), extra):
        shares = [(base + (1 if i in extra_nodes else 0)) * group for i in range(k)]
        for i in range(k) if leftover else [None]:
            with_left = list(shares)
            if i is not None:
                with_left[i] += leftover
            options.add(tuple(with_left))
    return sorted(options)


def _fits(ctx: _Context, part: CpuSet, share: int, options: AllocationOptions) -> bool:
    if share > len(part):
        return False
    if options.full_pcpus_only:
        return ctx.whole_capacity(part, share) == share
    return True


def _variance(values: list[int]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def _spread_distance(node_ids: list[int], distances: dict[int, tuple[int, ...]]) -> int:
    total = 0
    for a, b in itertools.combinations(node_ids, 2):
        row = distances.get(a, ())
        total += row[b] if b < len(row) else 0
    return total
