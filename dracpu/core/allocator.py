"""Choose CPUs for a claim: topology + available CPUs + count + options → a CpuSet, or an error.

Behaves like the kubelet CPU Manager's static policy in packed mode, written from its behaviour:

1. whole free groups of the larger of socket / NUMA node, then of the other, then whole L3
   (uncore) groups, each while the request is at least a group's size, most-used domain first;
2. the remainder goes to the tightest domain that can hold it without giving up whole cores
   (best fit: the fewest free CPUs first), finest first: L3 ∩ NUMA node, NUMA node, then
   unions of NUMA nodes;
3. inside it, whole free cores, then single CPUs from the most-used cores.

When no single NUMA node can hold the claim at that quality, the domain is the union of the
fewest NUMA nodes that can, ties going to the fewest L3 groups, then sockets, then best fit; so a
claim of a NUMA node and a bit stays on two nodes on machines that number CPUs round-robin across
nodes. Domains with equal free counts are taken one after the other, never interleaved.

Step 1 runs inside a best-fit domain too, chosen so that it gives up nothing the whole machine
could offer (a whole NUMA node, whole cores): on a sub-NUMA-clustered socket whose L3 spans two
NUMA nodes, a claim stays under one L3 when one can hold it. Precedence when these goals
conflict: whole sockets / NUMA nodes, then whole L3 groups, then whole cores, then the fewest
NUMA nodes, L3 groups and sockets.

"Most-used first" keeps free space contiguous for later, larger claims. Cores are keyed by
(package, die, core_id), so multi-socket machines, 1/2/4-way SMT, hybrid parts and unevenly
offlined CPUs are handled without assuming a fixed number of threads per core.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
from collections.abc import Iterable, Sequence
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
    ctx = _Index.of(topology)
    free = available & topology.online
    if count > len(free):
        raise AllocationError(
            f"requested {count} CPUs but only {len(free)} are available ({free or 'none'})"
        )
    if options.full_pcpus_only:
        free = ctx.whole_cores_in(free)
        _check_full_pcpus(ctx, free, count)
        # Whole cores only: there is no thread-level choice left for "spread" to make.
        options = dataclasses.replace(options, strategy=Strategy.PACKED)
    if options.distribute_across_numa and len(topology.numas) > 1:
        return _distribute_across_numa(ctx, free, count, options)
    return _take(ctx, free, count, options.strategy, whole_cores_only=options.full_pcpus_only)


def _check_full_pcpus(ctx: _Index, whole_free: CpuSet, count: int) -> None:
    width = ctx.topology.uniform_threads_per_core
    if width is not None and count % width:
        raise AllocationError(
            f"full-pcpus-only: {count} CPUs is not a multiple of the {width} threads per core"
        )
    if ctx.whole_capacity(whole_free.mask, count) != count:
        raise AllocationError(
            f"full-pcpus-only: {count} CPUs cannot be made of whole free cores "
            f"({len(whole_free)} CPUs are in whole free cores: {whole_free or 'none'})"
        )


def _popcount(mask: int) -> int:
    return mask.bit_count()


def _low_cpu(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


class _Index:
    """The topology as int masks: domain levels, cores, and who contains whom, with the queries
    the allocator asks of them. Built once per Topology and memoised on it, since it depends on
    nothing else; free CPUs are always passed in.

    Whole cores are found with shifts, not by visiting cores: cores are grouped by the offsets
    of their siblings from their first CPU (``n, n+40`` → ``(40,)``), so the first CPUs of the
    cores lying inside ``scope`` are ``firsts & scope & scope >> 40``: one integer operation per
    pattern, and a machine has one pattern per core shape (one or two in practice).
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        sockets = [c.mask for c in topology.sockets.values()]
        numas = [c.mask for c in topology.numas.values()]
        larger_first = [sockets, numas]
        if max(map(_popcount, numas), default=0) > max(map(_popcount, sockets), default=0):
            larger_first.reverse()
        levels = [*larger_first, [c.mask for c in topology.l3_groups.values()]]
        self.levels: list[list[int]] = [level for level in levels if level]
        self.sized_levels: list[list[tuple[int, int]]] = [
            [(g, g.bit_count()) for g in level] for level in self.levels
        ]
        self.smallest_group = min((size for lv in self.sized_levels for _, size in lv), default=0)
        self.no_groups = (False,) * len(self.levels)
        self.cores: list[int] = [c.mask for c in topology.cores.values()]
        self.core_of_cpu: dict[int, int] = {}
        for index, core in enumerate(self.cores):
            for cpu in CpuSet(core):
                self.core_of_cpu[cpu] = index
        # Cores by shape: (size, first CPUs, sibling offsets), largest cores first.
        shapes: dict[tuple[int, ...], int] = {}
        self.core_at_first: dict[int, int] = {}
        for core in self.cores:
            cpus = CpuSet(core).to_list()
            offsets = tuple(cpu - cpus[0] for cpu in cpus[1:])
            shapes[offsets] = shapes.get(offsets, 0) | 1 << cpus[0]
            self.core_at_first[cpus[0]] = core
        self.shapes: list[tuple[int, int, tuple[int, ...]]] = sorted(
            ((len(offsets) + 1, firsts, offsets) for offsets, firsts in shapes.items()),
            key=lambda shape: -shape[0],
        )
        # Per level: the group of every CPU.
        self.group_of: list[dict[int, int]] = []
        for level in self.levels:
            index_of: dict[int, int] = {}
            for gi, group in enumerate(level):
                for cpu in CpuSet(group):
                    index_of[cpu] = gi
            self.group_of.append(index_of)
        # Domain cells, finest first: CPUs sharing their group at the first d levels, for
        # d = all levels down to 1. The finest cells keep their group at every level.
        self.cells: list[list[int]] = []
        self.fine_groups: list[tuple[int, ...]] = []
        for depth in range(len(self.levels), 0, -1):
            masks: dict[tuple[int, ...], int] = {}
            for cpu in topology.online:
                key = tuple(self.group_of[li].get(cpu, -1) for li in range(depth))
                masks[key] = masks.get(key, 0) | 1 << cpu
            ordered = sorted(masks.items(), key=lambda item: _low_cpu(item[1]))
            self.cells.append([mask for _, mask in ordered])
            if depth == len(self.levels):
                self.fine_groups = [key for key, _ in ordered]
        # The depth whose cells are socket ∩ NUMA node blocks (what unions are built from when
        # no single NUMA node holds a claim), or -1 when the machine has no such level.
        self.block_depth = len(self.levels) - 2 if len(self.levels) >= 2 else -1
        self.numa_level = self._level_index(numas)
        self.l3_level = self._level_index([c.mask for c in topology.l3_groups.values()])
        self.socket_level = self._level_index(sockets)

    def _level_index(self, groups: list[int]) -> int:
        return self.levels.index(groups) if groups and groups in self.levels else -1

    def spread_of(self, mask: int) -> tuple[int, int, int]:
        """How many NUMA nodes, L3 groups and sockets the CPUs of ``mask`` touch."""
        return tuple(  # type: ignore[return-value]
            sum(1 for g in self.levels[li] if g & mask) if li >= 0 else 0
            for li in (self.numa_level, self.l3_level, self.socket_level)
        )

    @staticmethod
    def of(topology: Topology) -> _Index:
        """The memoised index of ``topology``."""
        index = topology.derived.get("allocator")
        if not isinstance(index, _Index):
            index = _Index(topology)
            topology.derived["allocator"] = index
        return index

    def pack_key(self, mask: int, free: int) -> tuple[int, ...]:
        """Sort key: fewer free CPUs in each enclosing domain first, then the lowest CPU.

        Each count is followed by the domain's index, so that domains with equal counts are
        taken one after the other rather than interleaved by CPU number (machines that number
        CPUs round-robin across NUMA nodes would otherwise alternate nodes).
        """
        first = _low_cpu(mask)
        key: list[int] = []
        for level, index in zip(self.levels, self.group_of, strict=True):
            group = index.get(first)
            if group is None:
                key += (0, -1)
            else:
                key += ((level[group] & free).bit_count(), group)
        key.append(first)
        return tuple(key)

    def fine_rank(self, scope: int, free: int) -> list[tuple[int, int]]:
        """The finest cells meeting ``scope``, as (rank, part of scope), in the order of
        ``pack_key``: the key of a CPU is its cell's group counts and indexes, then the CPU,
        so ordering the cells once orders the CPUs of different cells."""
        touched = []
        for cell, groups in zip(self.cells[0], self.fine_groups, strict=True):
            part = cell & scope
            if part:
                key: list[int] = []
                for li, gi in enumerate(groups):
                    key += (0, -1) if gi < 0 else ((self.levels[li][gi] & free).bit_count(), gi)
                touched.append((key, part))
        touched.sort(key=lambda t: t[0])
        return [(rank, part) for rank, (_, part) in enumerate(touched)]

    def whole_firsts(self, scope: int) -> list[tuple[int, int]]:
        """(core size, first CPUs of the cores lying inside ``scope``), largest cores first."""
        found = []
        for size, firsts, offsets in self.shapes:
            inside = firsts & scope
            for offset in offsets:
                inside &= scope >> offset
            if inside:
                found.append((size, inside))
        return found

    def whole_cores_in(self, cpus: CpuSet) -> CpuSet:
        """CPUs of the cores that lie entirely inside ``cpus``."""
        mask = 0
        for _, firsts in self.whole_firsts(cpus.mask):
            while firsts:
                low = firsts & -firsts
                mask |= self.core_at_first[low.bit_length() - 1]
                firsts ^= low
        return CpuSet(mask)

    def whole_capacity(self, scope: int, count: int) -> int:
        """Most CPUs, up to ``count``, that whole cores inside ``scope`` can make up.

        Greedy by core size, which is exact for the 1/2/4-thread sizes real machines have.
        """
        total = 0
        for size, firsts in self.whole_firsts(scope):
            total += min(firsts.bit_count(), (count - total) // size) * size
        return total

    def whole_groups(self, scope: int, count: int) -> tuple[bool, ...]:
        """Per level: whether a whole group of at most ``count`` CPUs lies inside ``scope``."""
        if count < self.smallest_group:
            return self.no_groups
        return tuple(
            any(size <= count and g & ~scope == 0 for g, size in level)
            for level in self.sized_levels
        )

    def quality(self, scope: int, count: int) -> tuple[object, ...]:
        """What an allocation inside ``scope`` can achieve: the whole domains it could take at
        each level, and how many CPUs whole cores can cover. A narrower scope is only chosen
        when it gives up none of these.
        """
        return (self.whole_groups(scope, count), self.whole_capacity(scope, count))


def _take(
    ctx: _Index,
    free_set: CpuSet,
    count: int,
    strategy: Strategy,
    *,
    whole_cores_only: bool = False,
) -> CpuSet:
    """Take ``count`` CPUs out of ``free_set`` (which holds at least that many)."""
    free = free_set.mask
    scope, exact = _narrow(ctx, free, free, count)
    taken = 0
    # Whole free domains inside the scope, larger levels first, most-used first.
    for level in ctx.sized_levels if count >= ctx.smallest_group else ():
        while count > 0:
            candidates = [g for g, size in level if size <= count and g & ~scope == 0]
            if whole_cores_only:
                # Only whole domains after which the rest can still be made of whole cores.
                candidates = [
                    g
                    for g in candidates
                    if ctx.whole_capacity(scope & ~g, count - g.bit_count())
                    == count - g.bit_count()
                ]
            if not candidates:
                break
            group = min(candidates, key=lambda g: ctx.pack_key(g, free))
            taken |= group
            scope &= ~group
            free &= ~group
            count -= group.bit_count()
    if count == 0:
        return CpuSet(taken)
    if taken or not exact:
        # An exact narrowing is final: narrowing its result again gives it back.
        scope, _ = _narrow(ctx, scope, free, count)
    if strategy is Strategy.SPREAD:
        return CpuSet(taken | _pick_spread(ctx, scope, free, count))
    return CpuSet(taken | _pick_packed(ctx, scope, free, count))


def _narrow(ctx: _Index, scope: int, free: int, count: int) -> tuple[int, bool]:
    """The most local domain inside ``scope`` that holds ``count`` CPUs at no loss of quality,
    and whether the search was exhaustive (not cut short by ``MAX_BLOCK_COMBINATIONS``).

    Domains are tried finest first (socket ∩ NUMA ∩ L3 cells, then socket ∩ NUMA, then
    unions of those), so a claim lands under one L3 whenever one can hold it; among domains of
    one granularity the one with the fewest free CPUs wins (best fit), then the most-used.
    """
    target: tuple[object, ...] | None = None
    for depth, cells in enumerate(ctx.cells):
        best: tuple[tuple[int, tuple[int, ...]], int] | None = None
        for cell in cells:
            part = cell & scope
            if part == scope:
                # One cell holds the whole scope: no other cell meets it, nothing to narrow.
                return scope, True
            size = part.bit_count()
            if size < count or (best is not None and size > best[0][0]):
                continue
            if target is None:
                target = ctx.quality(scope, count)
            if ctx.quality(part, count) != target:
                continue
            key = (size, ctx.pack_key(part, free))
            if best is None or key < best[0]:
                best = (key, part)
        if best is not None:
            return best[1], True
        if depth == ctx.block_depth:
            # No single NUMA node holds it: the fewest NUMA nodes (then L3 groups, then sockets)
            # that do, before any single coarser domain, which may span more nodes than needed.
            if target is None:
                target = ctx.quality(scope, count)
            return _fewest_blocks(ctx, scope, free, count, target)
    return scope, True


MAX_BLOCK_COMBINATIONS = 512
"""Bound on the NUMA-node combinations examined per size when narrowing; beyond it only the
combination of the freest nodes is tried."""


def _fewest_blocks(
    ctx: _Index, scope: int, free: int, count: int, target: object
) -> tuple[int, bool]:
    """The union of the fewest blocks (socket ∩ NUMA node cells) inside ``scope`` that holds
    ``count`` CPUs at the quality ``target``; ties go to the fewest NUMA nodes, L3 groups and
    sockets touched, then the fewest free CPUs (best fit), then the most-used.
    """
    blocks = [part for cell in ctx.cells[ctx.block_depth] if (part := cell & scope)]
    freest = sorted(blocks, key=lambda b: -b.bit_count())
    exact = True
    for k in range(2, len(blocks)):
        if sum(part.bit_count() for part in freest[:k]) < count:
            continue
        if math.comb(len(blocks), k) <= MAX_BLOCK_COMBINATIONS:
            combos: Iterable[tuple[int, ...]] = itertools.combinations(blocks, k)
        else:
            combos = [tuple(freest[:k])]
            exact = False
        best: tuple[tuple[object, ...], int] | None = None
        for combo in combos:
            union = 0
            for part in combo:
                union |= part
            size = union.bit_count()
            if size < count or ctx.quality(union, count) != target:
                continue
            key = (*ctx.spread_of(union), size, ctx.pack_key(union, free))
            if best is None or key < best[0]:
                best = (key, union)
        if best is not None:
            return best[1], exact
    # Every block is needed: their union is the scope.
    return scope, exact


def _pick_packed(ctx: _Index, scope: int, free: int, count: int) -> int:
    """Whole cores (largest first, most-used first), then threads of the most-used cores."""
    taken = 0
    cells = ctx.fine_rank(scope, free)
    for size, firsts in ctx.whole_firsts(scope):
        if size > count:
            continue
        for _, part in cells:
            inside = firsts & part
            while inside:
                low = inside & -inside
                taken |= ctx.core_at_first[low.bit_length() - 1]
                count -= size
                if count < size:
                    break
                inside ^= low
            if count < size:
                break
        if count == 0:
            return taken
    # Single threads: those with the fewest free siblings first, then in pack_key order.
    rest = scope & ~taken
    order = []
    for rank, part in cells:
        part &= rest
        while part:
            low = part & -part
            cpu = low.bit_length() - 1
            siblings = ctx.cores[ctx.core_of_cpu[cpu]]
            order.append(((siblings & rest).bit_count(), rank, cpu))
            part ^= low
    order.sort()
    for _, _, cpu in order[:count]:
        taken |= 1 << cpu
    return taken


def _pick_spread(ctx: _Index, scope: int, free: int, count: int) -> int:
    """One thread from each core in turn (idlest cores first), then the next thread of each."""
    by_core = [CpuSet(core & scope).to_list() for core in ctx.cores if core & scope]
    by_core.sort(key=lambda t: (-len(t), ctx.pack_key(1 << t[0], free)))
    order = [cpu for round_ in itertools.zip_longest(*by_core) for cpu in round_ if cpu is not None]
    taken = 0
    for cpu in order[:count]:
        taken |= 1 << cpu
    return taken


MAX_NUMA_COMBINATIONS = 512
"""Bound on the node combinations examined per size; beyond it only the freest nodes are tried."""


def _distribute_across_numa(
    ctx: _Index, free: CpuSet, count: int, options: AllocationOptions
) -> CpuSet:
    """Split evenly, in groups of threads-per-core, over the fewest NUMA nodes that fit.

    Among the combinations of that many nodes, the one leaving free CPUs most balanced across
    all nodes wins, then the one with the smallest NUMA distances, then the lowest node ids.
    """
    nodes = [(nid, cpus & free) for nid, cpus in ctx.topology.numas.items()]
    nodes = [(nid, part) for nid, part in nodes if part]
    freest = sorted(nodes, key=lambda n: (-len(n[1]), n[0]))
    group = max(ctx.topology.threads_per_core, 1)
    distances = {n.id: n.distances for n in ctx.topology.numa_nodes}
    for k in range(1, len(nodes) + 1):
        if sum(len(part) for _, part in freest[:k]) < count:
            continue
        if math.comb(len(nodes), k) <= MAX_NUMA_COMBINATIONS:
            combos: Iterable[tuple[tuple[int, CpuSet], ...]] = itertools.combinations(nodes, k)
        else:
            combos = [tuple(sorted(freest[:k], key=lambda n: n[0]))]
        best: tuple[tuple[float, int, tuple[int, ...]], list[tuple[CpuSet, int]]] | None = None
        for combo in combos:
            plan = _even_plan(combo, count, group)
            if not all(_fits(ctx, part, share, options) for part, share in plan):
                continue
            after = {nid: len(part) for nid, part in nodes}
            for (nid, _), (_, share) in zip(combo, plan, strict=True):
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
                    taken = taken | _take(
                        ctx, part, share, options.strategy, whole_cores_only=options.full_pcpus_only
                    )
            return taken
    raise AllocationError(
        f"distribute-across-numa: {count} CPUs cannot be split evenly over the NUMA nodes' "
        f"free CPUs ({', '.join(f'node {nid}: {len(part)}' for nid, part in nodes) or 'none'})"
    )


def _even_plan(
    combo: Sequence[tuple[int, CpuSet]], count: int, group: int
) -> list[tuple[CpuSet, int]]:
    """Split ``count`` over the nodes of ``combo`` in groups of ``group`` CPUs, as evenly as
    possible; the odd groups and CPUs go to the nodes with the most free CPUs (then lowest id),
    which is also what keeps free space balanced.
    """
    groups, leftover = divmod(count, group)
    base, extra = divmod(groups, len(combo))
    order = sorted(range(len(combo)), key=lambda i: (-len(combo[i][1]), combo[i][0]))
    shares = [base * group] * len(combo)
    for i in order[:extra]:
        shares[i] += group
    if leftover:
        shares[order[extra % len(combo)]] += leftover
    return [(part, share) for (_, part), share in zip(combo, shares, strict=True)]


def _fits(ctx: _Index, part: CpuSet, share: int, options: AllocationOptions) -> bool:
    if share > len(part):
        return False
    if options.full_pcpus_only:
        return ctx.whole_capacity(part.mask, share) == share
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
