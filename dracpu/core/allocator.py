"""Choose CPUs for a claim: topology + available CPUs + count + options → a CpuSet, or an error.

Behaves like the kubelet CPU Manager's static policy in packed mode, written from its behaviour:

1. whole free groups of the larger of socket / NUMA node, then of the other, then whole L3
   (uncore) groups, each while the request is at least a group's size, most-used domain first;
2. the remainder goes to the tightest domain that can hold it without giving up whole cores
   (best fit: the fewest free CPUs first), descending socket → NUMA → L3;
3. inside it, whole free cores, then single CPUs from the most-used cores.

When no single NUMA node can hold the claim at that quality, the domain is the union of the
fewest NUMA nodes that can, ties going to the fewest L3 groups, then sockets, then best fit; so a
claim of a NUMA node and a bit stays on two nodes on machines that number CPUs round-robin across
nodes. Domains with equal free counts are taken one after the other, never interleaved.

Step 1 runs inside a best-fit domain too, chosen so that it gives up nothing the whole machine
could offer (a whole NUMA node, whole cores): on a sub-NUMA-clustered socket whose L3 spans two
NUMA nodes, a claim stays under one L3 when one can hold it. Precedence when these goals
conflict: whole sockets / NUMA nodes, then whole L3 groups, then whole cores, then one L3.

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
    if ctx.whole_capacity(whole_free.mask, count, ctx.all_cores) != count:
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
        self.cores: list[int] = [c.mask for c in topology.cores.values()]
        self.all_cores: list[int] = list(range(len(self.cores)))
        self.core_of_cpu: dict[int, int] = {}
        for index, core in enumerate(self.cores):
            for cpu in CpuSet(core):
                self.core_of_cpu[cpu] = index
        # Per level: the group of every CPU.
        self.group_of: list[dict[int, int]] = []
        for level in self.levels:
            index_of: dict[int, int] = {}
            for gi, group in enumerate(level):
                for cpu in CpuSet(group):
                    index_of[cpu] = gi
            self.group_of.append(index_of)
        # Domain cells, finest first: CPUs sharing their group at the first d levels, for
        # d = all levels down to 1, each with the cores that touch it.
        self.cells: list[list[tuple[int, list[int]]]] = []
        for depth in range(len(self.levels), 0, -1):
            masks: dict[tuple[int, ...], int] = {}
            for cpu in topology.online:
                key = tuple(self.group_of[li].get(cpu, -1) for li in range(depth))
                masks[key] = masks.get(key, 0) | 1 << cpu
            cells = []
            for mask in sorted(masks.values(), key=_low_cpu):
                cores = sorted({self.core_of_cpu[cpu] for cpu in CpuSet(mask)})
                cells.append((mask, cores))
            self.cells.append(cells)
        # The depth whose cells are socket ∩ NUMA node blocks (what unions are built from when
        # no single NUMA node holds a claim), or -1 when the machine has no such level.
        self.block_depth = len(self.levels) - 2 if len(self.levels) >= 2 else -1
        self.numa_level = self._level_index([c.mask for c in topology.numas.values()])
        self.l3_level = self._level_index([c.mask for c in topology.l3_groups.values()])
        self.socket_level = self._level_index([c.mask for c in topology.sockets.values()])

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
                key += (_popcount(level[group] & free), group)
        key.append(first)
        return tuple(key)

    def whole_cores_in(self, cpus: CpuSet) -> CpuSet:
        """CPUs of the cores that lie entirely inside ``cpus``."""
        mask = 0
        for core in self.cores:
            if core & ~cpus.mask == 0:
                mask |= core
        return CpuSet(mask)

    def whole_capacity(self, scope: int, count: int, candidates: list[int]) -> int:
        """Most CPUs, up to ``count``, that whole cores inside ``scope`` can make up.

        Greedy by core size, which is exact for the 1/2/4-thread sizes real machines have.
        """
        sizes = sorted(
            (_popcount(self.cores[i]) for i in candidates if self.cores[i] & ~scope == 0),
            reverse=True,
        )
        total = 0
        for size in sizes:
            if total + size <= count:
                total += size
                if total == count:
                    break
        return total

    def quality(self, scope: int, count: int, candidates: list[int]) -> tuple[object, ...]:
        """What an allocation inside ``scope`` can achieve: the whole domains it could take at
        each level, and how many CPUs whole cores can cover. A narrower scope is only chosen
        when it gives up none of these.
        """
        whole_groups = tuple(
            any(g and g & ~scope == 0 and _popcount(g) <= count for g in level)
            for level in self.levels
        )
        return (whole_groups, self.whole_capacity(scope, count, candidates))


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
    scope = _narrow(ctx, free, free, count)
    taken = 0
    # Whole free domains inside the scope, larger levels first, most-used first.
    for level in ctx.levels:
        while count > 0:
            candidates = [g for g in level if g and g & ~scope == 0 and _popcount(g) <= count]
            if whole_cores_only:
                # Only whole domains after which the rest can still be made of whole cores.
                candidates = [
                    g
                    for g in candidates
                    if ctx.whole_capacity(scope & ~g, count - _popcount(g), ctx.all_cores)
                    == count - _popcount(g)
                ]
            if not candidates:
                break
            group = min(candidates, key=lambda g: ctx.pack_key(g, free))
            taken |= group
            scope &= ~group
            free &= ~group
            count -= _popcount(group)
    if count == 0:
        return CpuSet(taken)
    scope = _narrow(ctx, scope, free, count)
    if strategy is Strategy.SPREAD:
        return CpuSet(taken | _pick_spread(ctx, scope, free, count))
    return CpuSet(taken | _pick_packed(ctx, scope, free, count))


def _narrow(ctx: _Index, scope: int, free: int, count: int) -> int:
    """The most local domain inside ``scope`` that holds ``count`` CPUs at no loss of quality.

    Domains are tried finest first (socket ∩ NUMA ∩ L3 cells, then socket ∩ NUMA, then
    sockets), so a claim lands under one L3 whenever one can hold it; among domains of one
    granularity the one with the fewest free CPUs wins (best fit), then the most-used.
    """
    target = ctx.quality(scope, count, ctx.all_cores)
    for depth, cells in enumerate(ctx.cells):
        best: tuple[tuple[int, tuple[int, ...]], int] | None = None
        for cell, cores in cells:
            part = cell & scope
            size = _popcount(part)
            if size < count or (best is not None and size > best[0][0]):
                continue
            if ctx.quality(part, count, cores) != target:
                continue
            key = (size, ctx.pack_key(part, free))
            if best is None or key < best[0]:
                best = (key, part)
        if best is not None:
            return best[1]
        if depth == ctx.block_depth:
            # No single NUMA node holds it: the fewest NUMA nodes (then L3 groups, then sockets)
            # that do, before any single coarser domain, which may span more nodes than needed.
            return _fewest_blocks(ctx, scope, free, count, target)
    return scope


MAX_BLOCK_COMBINATIONS = 512
"""Bound on the NUMA-node combinations examined per size when narrowing; beyond it only the
combination of the freest nodes is tried."""


def _fewest_blocks(ctx: _Index, scope: int, free: int, count: int, target: object) -> int:
    """The union of the fewest blocks (socket ∩ NUMA node cells) inside ``scope`` that holds
    ``count`` CPUs at the quality ``target``; ties go to the fewest NUMA nodes, L3 groups and
    sockets touched, then the fewest free CPUs (best fit), then the most-used.
    """
    blocks = [(cell & scope, cores) for cell, cores in ctx.cells[ctx.block_depth]]
    blocks = [(part, cores) for part, cores in blocks if part]
    freest = sorted(blocks, key=lambda b: -_popcount(b[0]))
    for k in range(2, len(blocks) + 1):
        if sum(_popcount(part) for part, _ in freest[:k]) < count:
            continue
        if math.comb(len(blocks), k) <= MAX_BLOCK_COMBINATIONS:
            combos: Iterable[tuple[tuple[int, list[int]], ...]] = itertools.combinations(blocks, k)
        else:
            combos = [tuple(freest[:k])]
        best: tuple[tuple[object, ...], int] | None = None
        for combo in combos:
            union = 0
            cores: list[int] = []
            for part, block_cores in combo:
                union |= part
                cores += block_cores
            size = _popcount(union)
            if size < count or ctx.quality(union, count, cores) != target:
                continue
            key = (*ctx.spread_of(union), size, ctx.pack_key(union, free))
            if best is None or key < best[0]:
                best = (key, union)
        if best is not None:
            return best[1]
    return scope


def _pick_packed(ctx: _Index, scope: int, free: int, count: int) -> int:
    """Whole cores (largest first, most-used first), then threads of the most-used cores."""
    taken = 0
    cores = [c for c in ctx.cores if c & ~scope == 0]
    cores.sort(key=lambda c: (-_popcount(c), ctx.pack_key(c, free)))
    for core in cores:
        size = _popcount(core)
        if size <= count:
            taken |= core
            count -= size
            if count == 0:
                return taken
    rest = scope & ~taken

    def most_used(cpu: int) -> tuple[int, tuple[int, ...]]:
        siblings = ctx.cores[ctx.core_of_cpu[cpu]]
        return (_popcount(siblings & rest), ctx.pack_key(1 << cpu, free))

    for cpu in sorted(CpuSet(rest), key=most_used)[:count]:
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
        return ctx.whole_capacity(part.mask, share, ctx.all_cores) == share
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
