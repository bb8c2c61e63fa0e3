"""Pure-core benchmarks (issue "Pure core"): allocation latency and topology discovery time.

Prints figures; it is not a timed test. Run with ``just bench-core``.
"""

from __future__ import annotations

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
from dracpu.core.slices import SliceOptions, build_slice_specs  # noqa: E402
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


def main() -> None:
    two_socket = read_topology(FIXTURES / "2-socket-4-node-40-core" / "sys")
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
        lambda: build_slice_specs(big, SliceOptions("n")),
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
