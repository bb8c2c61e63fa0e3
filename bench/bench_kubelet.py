"""Benchmark: NodePrepareResources round trips from grpcio (the kubelet side) to dracpu.

The plugin runs in a child process (as it would on a node: separate from the kubelet) with a
no-op claim handler and the default configuration (calls serialized, like the Go helper). The
parent is the kubelet stand-in: grpcio over the real unix socket, one claim per call.

    python bench/bench_kubelet.py [--calls 2000] [--concurrency 100]

Prints p50/p99/max latency for sequential calls and for N-way concurrent calls. Goal: sequential
p99 <= 3 ms.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEQUENTIAL_GOAL_P99_MS = 3.0


class NoOpHandler:
    """Prepares every claim with one device; does nothing else."""

    async def prepare(self, claims: Sequence[object]) -> Mapping[str, object]:
        from dracpu.kubelet import ClaimPrepared, PreparedDevice

        return {
            c.uid: ClaimPrepared((PreparedDevice("node", "cpudev000"),))  # type: ignore[attr-defined]
            for c in claims
        }

    async def unprepare(self, claims: Sequence[object]) -> Mapping[str, object]:
        from dracpu.kubelet import ClaimUnprepared

        return {c.uid: ClaimUnprepared() for c in claims}  # type: ignore[attr-defined]


def serve(root: Path) -> None:
    """Child process: serve the plugin under ``root`` until SIGINT/SIGTERM."""
    import trio

    from dracpu.kubelet import HealthBoard, KubeletPluginConfig, serve_kubelet_plugin

    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                await nursery.start(
                    serve_kubelet_plugin,
                    KubeletPluginConfig(kubelet_root=root),
                    NoOpHandler(),
                    HealthBoard(),
                )
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    if os.environ.get("BENCH_PROFILE"):
        import cProfile

        cProfile.runctx("trio.run(main)", globals(), locals(), os.environ["BENCH_PROFILE"])
    else:
        trio.run(main)


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "max_ms": ordered[-1] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


def _report(name: str, samples: list[float], wall: float) -> dict[str, float]:
    stats = _percentiles(samples)
    print(
        f"{name:<28} n={len(samples):5d}  p50={stats['p50_ms']:7.3f} ms  "
        f"p99={stats['p99_ms']:7.3f} ms  max={stats['max_ms']:7.3f} ms  "
        f"throughput={len(samples) / wall:8.0f}/s"
    )
    return stats


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds consumed so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def run_client(socket_path: Path, calls: int, concurrency: int, server_pid: int) -> bool:
    """Parent process: drive the plugin with grpcio; returns whether the sequential goal held."""
    import grpc

    from tests.support.grpcio_protos import load_grpc_modules

    pb2, pb2_grpc = load_grpc_modules(REPO / "protos", "k8s.io/kubelet/pkg/apis/dra/v1/api.proto")
    channel = grpc.insecure_channel(f"unix://{socket_path}")
    stub = pb2_grpc.DRAPluginStub(channel)

    def request(i: int) -> object:
        return pb2.NodePrepareResourcesRequest(
            claims=[pb2.Claim(namespace="bench", name=f"claim-{i}", uid=f"uid-{i}")]
        )

    def one(i: int) -> float:
        req = request(i)
        start = time.perf_counter()
        response = stub.NodePrepareResources(req, timeout=10)
        elapsed = time.perf_counter() - start
        assert response.claims[f"uid-{i}"].devices[0].device_name == "cpudev000"
        return elapsed

    for i in range(200):  # warm up: connection, code paths, caches
        one(i)

    cpu0 = _cpu_seconds(server_pid)
    start = time.perf_counter()
    sequential = [one(i) for i in range(calls)]
    seq_stats = _report("sequential", sequential, time.perf_counter() - start)
    cpu1 = _cpu_seconds(server_pid)
    user_us, sys_us = ((b - a) / calls * 1e6 for a, b in zip(cpu0, cpu1, strict=True))
    print(f"{'':<28} plugin CPU per call: {user_us:.0f} us user + {sys_us:.0f} us system")

    concurrent: list[float] = []
    lock = threading.Lock()
    per_worker = calls // concurrency

    def worker(w: int) -> None:
        mine = [one(w * per_worker + k) for k in range(per_worker)]
        with lock:
            concurrent.extend(mine)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _report(f"{concurrency}-way concurrent", concurrent, time.perf_counter() - start)
    channel.close()
    ok = seq_stats["p99_ms"] <= SEQUENTIAL_GOAL_P99_MS
    verdict = "met" if ok else "MISSED"
    print(f"goal sequential p99 <= {SEQUENTIAL_GOAL_P99_MS} ms: {verdict}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    root = Path(tempfile.mkdtemp(prefix="bench-kl-", dir="/tmp"))
    socket_path = root / "plugins" / "dra.cpu" / "dra.sock"
    registration = root / "plugins_registry" / "dra.cpu-reg.sock"
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(root)], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not registration.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                print("plugin process did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        print(
            f"dracpu kubelet plugin (grpclib in trio-asyncio, child pid {child.pid}) "
            f"<- grpcio {__import__('grpc').__version__}, {os.cpu_count()} CPUs"
        )
        run_client(socket_path, args.calls, args.concurrency, child.pid)
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
