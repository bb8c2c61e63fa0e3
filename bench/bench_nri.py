"""Benchmark: CreateContainer round trips from the real Go NRI runtime (pkg/adaptation) to dracpu.

The Go peer (tests/peers/nri) is the runtime: it times ``Adaptation.CreateContainer`` around the
whole round trip (ttrpc over the NRI socket, our decode, the handler, our encode, the runtime's
merge of the adjustment). The plugin runs in this process with a handler that pins every
container to a fixed cpuset from in-memory state, as the real policy does.

    python bench/bench_nri.py [--calls 2000] [--nri-version v0.12.0] [--full-decode]

By default the handler takes the plugin's fastest CreateContainer path: the lazy strict read
(``dracpu.nri.lazy``) and an answer in the connection's read loop (``create_container_now``);
``--full-decode`` gives it the betterproto2 decode and encode in a task instead.

Prints p50/p99/max latency. Goal: p99 <= 1 ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dracpu.nri import NriPlugin, RuntimeInfo  # noqa: E402
from dracpu.nri.lazy import CreateRequestView  # noqa: E402
from generated.nri.pkg.api import v1alpha1 as api  # noqa: E402
from tests.nri.peer import build_peer, open_peer  # noqa: E402

GOAL_P99_MS = 1.0


class PinningHandler:
    """Answers CreateContainer with a cpuset adjustment; everything else is a no-op."""

    async def configure(self, runtime: RuntimeInfo) -> None:
        pass

    async def synchronize(
        self, pods: Sequence[api.PodSandbox], containers: Sequence[api.Container]
    ) -> Sequence[api.ContainerUpdate]:
        return []

    async def create_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> api.CreateContainerResponse:
        return api.CreateContainerResponse(
            adjust=api.ContainerAdjustment(
                linux=api.LinuxContainerAdjustment(
                    resources=api.LinuxResources(cpu=api.LinuxCpu(cpus="2-3", mems="0"))
                )
            )
        )

    async def update_container(
        self, pod: api.PodSandbox, container: api.Container, resources: api.LinuxResources | None
    ) -> Sequence[api.ContainerUpdate]:
        return []

    async def stop_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> Sequence[api.ContainerUpdate]:
        return []

    async def state_changed(
        self, event: api.Event, pod: api.PodSandbox | None, container: api.Container | None
    ) -> None:
        pass


class LazyPinningHandler(PinningHandler):
    """The same answer on the lazy path: the request's policy fields in, cached bytes out."""

    def __init__(self) -> None:
        self._answer: bytes | None = None

    async def create_container_view(self, request: CreateRequestView) -> bytes:
        return self.create_container_now(request)

    def create_container_now(self, request: CreateRequestView) -> bytes:
        if self._answer is None:
            self._answer = bytes(
                api.CreateContainerResponse(
                    adjust=api.ContainerAdjustment(
                        linux=api.LinuxContainerAdjustment(
                            resources=api.LinuxResources(cpu=api.LinuxCpu(cpus="2-3", mems="0"))
                        )
                    )
                )
            )
        return self._answer


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, round(q / 100 * len(sorted_ms)))
    return sorted_ms[rank - 1]


async def run(calls: int, version: str, full_decode: bool) -> list[float]:
    binary = build_peer(version)
    tmp = tempfile.mkdtemp(prefix="nri-bench-", dir="/tmp")
    socket = str(Path(tmp) / "nri.sock")
    try:
        async with trio.open_nursery() as nursery:
            peer = await open_peer(nursery, binary)
            await peer.command("add-pod", pod="bench")
            await peer.command("start", socket=socket)
            handler = PinningHandler() if full_decode else LazyPinningHandler()
            plugin = NriPlugin(handler, socket_path=socket)
            await nursery.start(plugin.run)
            await peer.wait_log("connected and synchronized")
            env = ["PATH=/usr/bin", "DRA_CPUSET_claim=2-3"]
            await peer.command("bench-create", pod="bench", n=100, env=env)  # warm-up
            result = await peer.command("bench-create", pod="bench", n=calls, env=env)
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(ns / 1e6 for ns in result["durations_ns"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--nri-version", default="v0.12.0")
    parser.add_argument("--full-decode", action="store_true")
    args = parser.parse_args()
    ms = trio.run(run, args.calls, args.nri_version, args.full_decode)
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    print(
        f"NRI CreateContainer round trips (Go pkg/adaptation {args.nri_version} -> dracpu, "
        f"{'betterproto2 decode' if args.full_decode else 'lazy path'}), "
        f"{len(ms)} sequential: p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {ms[-1]:.3f} ms, "
        f"mean {statistics.fmean(ms):.3f} ms (goal p99 <= {GOAL_P99_MS} ms: "
        f"{'met' if p99 <= GOAL_P99_MS else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
