"""Pure-core benchmarks (issue "Pure core"): allocation latency and topology discovery time.

Prints figures; it is not a timed test. Run with ``just bench-core``.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dracpu.core.allocator import AllocationOptions, allocate  # noqa: E402
from dracpu.core.claims import ClaimRef, parse_claim  # noqa: E402
from dracpu.core.cpuset import CpuSet  # noqa: E402
from dracpu.core.node import NodeConfig, NodeState, Prepare, step  # noqa: E402
from dracpu.core.slices import DeviceMode, SliceOptions, build_slice_specs  # noqa: E402
from dracpu.core.topology import Topology  # noqa: E402
from dracpu.sysfs import read_topology  # noqa: E402
from tests.support.claims import POOL, claim_json, grouped, parsed, prepare  # noqa: E402
from tests.support.topologies import NAMED_MACHINES, make_topology  # noqa: E402

FIXTURES = REPO / ".." / "shared" / "fixtures" / "sysfs"


def measure(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median, p99) in milliseconds over ``runs`` calls, after one warm-up call."""
    fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def report(name: str, fn: Callable[[], object], runs: int, goal_ms: float) -> None:
    median, p99 = measure(fn, runs)
    verdict = "ok" if median <= goal_ms else "OVER GOAL"
    print(f"{name:60} median {median:8.3f} ms  p99 {p99:8.3f} ms  goal {goal_ms} ms  {verdict}")


def report_us(name: str, fn: Callable[[], object], runs: int, goal_us: float) -> None:
    median, p99 = (ms * 1000 for ms in measure(fn, runs))
    verdict = "ok" if median <= goal_us else "OVER GOAL"
    print(f"{name:60} median {median:8.1f} µs  p99 {p99:8.1f} µs  goal {goal_us} µs  {verdict}")


def device_states(topo: Topology, device: CpuSet, states: int) -> list[CpuSet]:
    """``states`` free sets of one grouped device, each after other claims took some of its CPUs:
    a packed claim of 2-8 CPUs, plus every k-th CPU (k from 5 to 11) held by single-CPU claims."""
    free_sets = []
    for i in range(states):
        first = allocate(topo, device, 2 + i % 7)
        singles = CpuSet.of(list(device - first)[:: 5 + i % 7])
        free_sets.append(device - first - singles)
    return free_sets


def prepare_case(label: str, topo: Topology, device: CpuSet, count: int) -> None:
    """The allocation a grouped prepare makes: ``count`` CPUs inside one device whose CPUs other
    claims partly hold (issue 9: median ≤ 10 µs for 16 CPUs of a 40-CPU device). Each call
    sees the next of many different free sets, so nothing is measured on one repeated input."""
    free_sets = device_states(topo, device, 64)
    cycle = itertools.cycle(free_sets)
    report_us(
        f"prepare: {count} of {len(device)}-CPU {label}, others hold some",
        lambda: allocate(topo, next(cycle), count),
        2000,
        10.0,
    )


def main() -> None:
    two_socket = read_topology(FIXTURES / "2-socket-4-node-40-core" / "sys")
    prepare_case("socket (2-socket-4-node-40-core)", two_socket, two_socket.sockets[0], 16)
    prepare_case("NUMA node (2-socket-4-node-40-core)", two_socket, two_socket.numas[0], 8)
    fat = make_topology(2, 1, 20, 2)  # 2 sockets x 1 NUMA node of 20 cores x SMT-2
    prepare_case("NUMA node (synthetic 2x1x20x2)", fat, fat.numas[0], 16)
    report_us(
        "whole machine: 16 of 80 (2-socket-4-node-40-core), all free",
        lambda: allocate(two_socket, two_socket.online, 16),
        2000,
        30.0,
    )
    big = NAMED_MACHINES["synthetic-512"]()
    cases = [
        ("2-socket-4-node-40-core (80 CPUs)", two_socket),
        ("synthetic 512 CPUs, 8 NUMA, SMT-2", big),
    ]
    for label, topo in cases:
        online = topo.online
        report(
            f"allocate 64, all free: {label}", lambda t=topo, f=online: allocate(t, f, 64), 500, 1.0
        )
        used = CpuSet.of(list(online)[::6])  # every sixth CPU taken: fragmented free space
        frag = online - used
        report(
            f"allocate 64, fragmented: {label}",
            lambda t=topo, f=frag: allocate(t, f, 64),
            500,
            1.0,
        )
        report(
            f"allocate 64 distribute-across-numa: {label}",
            lambda t=topo, f=online: allocate(
                t, f, 64, AllocationOptions(distribute_across_numa=True)
            ),
            200,
            1.0,
        )
    largest = max(
        FIXTURES.iterdir(),
        key=lambda m: len(list((m / "sys/devices/system/cpu").glob("cpu[0-9]*"))),
    )
    report(f"topology discovery: {largest.name}", lambda: read_topology(largest / "sys"), 50, 200.0)
    report(
        "topology discovery: this machine (/sys)", lambda: read_topology(Path("/sys")), 50, 200.0
    )
    report(
        "slice build, individual: synthetic 512 CPUs",
        lambda: build_slice_specs(big, SliceOptions("n", mode=DeviceMode.INDIVIDUAL)),
        50,
        50.0,
    )
    prepare_cases()


def prepare_cases() -> None:
    """Issue 9: the allocation prepare makes, N CPUs inside one grouped device with other
    claims already holding some of its CPUs (goal: median <= 10 us for 16 of a 40-CPU node),
    and the whole step(Prepare) transition around it.
    """
    # 2 sockets x 1 NUMA x 20 cores x SMT-2: every NUMA node has 40 CPUs.
    topology = make_topology(sockets=2, numa_per_socket=1, cores_per_numa=20, threads=2)
    state = NodeState.initial(topology, NodeConfig(pool=POOL, reserved=CpuSet.of([0])))
    for uid, count in (("held-a", 6), ("held-b", 4), ("held-c", 2)):
        state, _, _ = prepare(state, parsed(uid, [grouped("cpudevnuma000", count)]))
    device = state.devices["cpudevnuma000"]
    available = device - state.held - state.config.reserved
    report(
        f"allocate 16 of a 40-CPU NUMA node, {len(state.held)} held by 3 claims",
        lambda: allocate(topology, available, 16),
        5000,
        0.010,
    )
    claim = parsed("new", [grouped("cpudevnuma000", 16)])
    event = Prepare((ClaimRef(claim.namespace, claim.name, claim.uid),), {claim.uid: claim})
    report("step(Prepare): 1 claim, 16 CPUs, 3 claims held", lambda: step(state, event), 5000, 0.1)
    raw = claim_json("new", [grouped("cpudevnuma000", 16)])
    report("parse_claim: 1 grouped result", lambda: parse_claim(raw, pool=POOL), 5000, 0.1)


if __name__ == "__main__":
    main()
