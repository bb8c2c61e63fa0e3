"""Allocator invariants over generated machines and free sets (hypothesis).

Each property states its precondition explicitly; where goals conflict the allocator's documented
precedence applies: whole sockets / NUMA nodes, whole L3 groups, whole cores, then one L3.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from dracpu.core.allocator import AllocationOptions, Strategy, _Index, allocate
from dracpu.core.cpuset import CpuSet
from dracpu.core.topology import Topology
from dracpu.errors import AllocationError
from tests.support.topologies import cpu_subsets, topologies

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
OPTIONS = st.builds(
    AllocationOptions,
    full_pcpus_only=st.booleans(),
    distribute_across_numa=st.booleans(),
    strategy=st.sampled_from(list(Strategy)),
)


@st.composite
def requests(draw: st.DrawFn, *, fit: bool = True) -> tuple[Topology, CpuSet, CpuSet, int]:
    """A machine, its free CPUs, reserved CPUs (the caller removes them from free) and a count:
    at most what is available when ``fit``, else up to a little more than the machine has."""
    topo = draw(topologies())
    free = draw(cpu_subsets(topo.online))
    reserved = draw(cpu_subsets(free))
    if fit and not free - reserved:
        free, reserved = topo.online, CpuSet()
    limit = len(free - reserved) if fit else len(topo.online) + 2
    count = draw(st.integers(1, limit))
    return topo, free, reserved, count


def whole_free_cores(topo: Topology, free: CpuSet) -> list[CpuSet]:
    return [core for core in topo.cores.values() if core <= free]


@SETTINGS
@given(requests(fit=False))
def test_exact_size_or_error_exactly_when_short(
    req: tuple[Topology, CpuSet, CpuSet, int],
) -> None:
    topo, free, reserved, count = req
    available = free - reserved
    if count > len(available):
        with pytest.raises(AllocationError, match=f"requested {count} CPUs"):
            allocate(topo, available, count)
        return
    cpus = allocate(topo, available, count)
    assert len(cpus) == count
    assert cpus <= available
    assert cpus.isdisjoint(reserved)


@SETTINGS
@given(requests(), OPTIONS)
def test_every_option_respects_available_and_is_deterministic(
    req: tuple[Topology, CpuSet, CpuSet, int], options: AllocationOptions
) -> None:
    topo, free, reserved, count = req
    available = free - reserved
    try:
        cpus = allocate(topo, available, count, options)
    except AllocationError:
        assume(False)
        return
    assert len(cpus) == count
    assert cpus <= available
    assert cpus.isdisjoint(reserved)
    assert allocate(topo, available, count, options) == cpus
    if options.full_pcpus_only:
        assert all(core <= cpus for core in topo.cores.values() if not core.isdisjoint(cpus))


@SETTINGS
@given(requests())
def test_full_pcpus_only_succeeds_when_whole_cores_suffice(
    req: tuple[Topology, CpuSet, CpuSet, int],
) -> None:
    topo, free, _, count = req
    width = topo.uniform_threads_per_core
    assume(width is not None)
    assert width is not None
    whole = whole_free_cores(topo, free)
    options = AllocationOptions(full_pcpus_only=True)
    if count % width == 0 and len(whole) * width >= count:
        cpus = allocate(topo, free, count, options)
        assert all(core <= cpus for core in topo.cores.values() if not core.isdisjoint(cpus))
    elif count % width:
        with pytest.raises(AllocationError, match="not a multiple"):
            allocate(topo, free, count, options)


@SETTINGS
@given(requests())
def test_whole_cores_whenever_the_free_set_allows(
    req: tuple[Topology, CpuSet, CpuSet, int],
) -> None:
    topo, free, _, count = req
    width = topo.uniform_threads_per_core
    assume(width is not None and count % width == 0)
    assert width is not None
    assume(len(whole_free_cores(topo, free)) * width >= count)
    cpus = allocate(topo, free, count)
    touched = [core for core in topo.cores.values() if not core.isdisjoint(cpus)]
    assert all(core <= cpus for core in touched), "split a core although whole ones were free"


@SETTINGS
@given(requests())
def test_a_whole_numa_node_when_one_is_free_and_the_count_covers_it(
    req: tuple[Topology, CpuSet, CpuSet, int],
) -> None:
    topo, free, _, count = req
    assume(count <= len(free))
    covered = [n for n in topo.numas.values() if n <= free and len(n) <= count]
    assume(covered)
    cpus = allocate(topo, free, count)
    assert any(node <= cpus for node in topo.numas.values())


@SETTINGS
@given(requests())
def test_inside_one_l3_when_a_free_l3_can_hold_it(
    req: tuple[Topology, CpuSet, CpuSet, int],
) -> None:
    topo, free, _, count = req
    assume(topo.l3_groups and topo.uniform_threads_per_core is not None)
    assume(any(g <= free and len(g) >= count for g in topo.l3_groups.values()))
    # Higher-precedence goals that would pull the claim apart must not apply.
    assume(not any(s <= free and len(s) <= count for s in topo.sockets.values()))
    assume(not any(n <= free and len(n) <= count for n in topo.numas.values()))
    assume(not any(g <= free and len(g) < count for g in topo.l3_groups.values()))
    cpus = allocate(topo, free, count)
    assert any(cpus <= g for g in topo.l3_groups.values())


def most_whole_cpus(topo: Topology, cpus: CpuSet, count: int) -> int:
    """The most CPUs, up to ``count``, that whole cores inside ``cpus`` make up (exact subset
    sum over core sizes, independent of the allocator's greedy)."""
    reachable = 1
    for core in whole_free_cores(topo, cpus):
        reachable |= reachable << len(core)
    reachable &= (1 << (count + 1)) - 1
    return reachable.bit_length() - 1


def fewest_nodes(topo: Topology, free: CpuSet, count: int, whole: int) -> int:
    """The fewest NUMA nodes whose free CPUs hold ``count`` CPUs, ``whole`` of them in whole
    cores."""
    nodes = [cpus & free for cpus in topo.numas.values()]
    for k in range(1, len(nodes) + 1):
        for combo in itertools.combinations(nodes, k):
            union = CpuSet.of(cpu for part in combo for cpu in part)
            if len(union) >= count and most_whole_cpus(topo, union, count) >= whole:
                return k
    raise AssertionError("the whole free set always qualifies")


@SETTINGS
@given(requests())
def test_fewest_numa_nodes_among_equally_whole_results(
    req: tuple[Topology, CpuSet, CpuSet, int],
) -> None:
    topo, free, _, count = req
    assume(len(topo.numas) <= 8)  # keeps the exhaustive search (and the allocator's) exact
    # Free whole sockets / NUMA nodes / L3 groups are taken first (higher precedence).
    domains = [*topo.sockets.values(), *topo.numas.values(), *topo.l3_groups.values()]
    assume(not any(d <= free and len(d) <= count for d in domains))
    cpus = allocate(topo, free, count)
    whole = sum(len(core) for core in whole_free_cores(topo, cpus))
    used = sum(1 for node in topo.numas.values() if not node.isdisjoint(cpus))
    assert used == fewest_nodes(topo, free, count, whole), (
        f"{cpus} spans {used} NUMA nodes with {whole} CPUs in whole cores"
    )


@SETTINGS
@given(topologies(), st.data())
def test_whole_core_index_agrees_with_visiting_every_core(
    topo: Topology, data: st.DataObject
) -> None:
    """The allocator finds whole cores by shifting masks per core shape; visiting each core
    must give the same cores and the same greedy capacity."""
    cpus = data.draw(cpu_subsets(topo.online))
    count = data.draw(st.integers(0, len(topo.online)))
    index = _Index.of(topo)
    whole = whole_free_cores(topo, cpus)
    assert index.whole_cores_in(cpus) == CpuSet.of(c for core in whole for c in core)
    total = 0
    for size in sorted((len(core) for core in whole), reverse=True):
        if total + size <= count:
            total += size
    assert index.whole_capacity(cpus.mask, count) == total


class ClaimsMachine(RuleBasedStateMachine):
    """Allocate and free claims on one machine: no CPU is ever given twice or lost."""

    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        self.topo: Topology | None = None
        self.free = CpuSet()
        self.held: dict[int, CpuSet] = {}
        self.next_id = 0

    @rule(topo=topologies(max_cpus=64))
    def boot(self, topo: Topology) -> None:
        if self.topo is None:
            self.topo = topo
            self.free = topo.online

    @rule(target=claims, count=st.integers(1, 24), options=OPTIONS)
    def allocate_claim(self, count: int, options: AllocationOptions) -> int:
        if self.topo is None:
            return -1
        try:
            cpus = allocate(self.topo, self.free, count, options)
        except AllocationError:
            return -1
        assert cpus <= self.free
        for other in self.held.values():
            assert cpus.isdisjoint(other)
        self.next_id += 1
        self.held[self.next_id] = cpus
        self.free = self.free - cpus
        return self.next_id

    @rule(claim=consumes(claims))
    def free_claim(self, claim: int) -> None:
        cpus = self.held.pop(claim, None)
        if cpus is not None:
            assert cpus.isdisjoint(self.free)
            self.free = self.free | cpus

    @invariant()
    def nothing_lost_or_doubled(self) -> None:
        if self.topo is None:
            return
        union = self.free
        total = len(self.free)
        for cpus in self.held.values():
            union = union | cpus
            total += len(cpus)
        assert union == self.topo.online
        assert total == len(self.topo.online)


TestClaimsMachine = ClaimsMachine.TestCase
TestClaimsMachine.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
)
