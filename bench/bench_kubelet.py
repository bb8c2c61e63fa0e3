"""Benchmark: NodePrepareResources round trips from grpcio (the kubelet side) to dracpu.

The plugin runs in a child process (as it would on a node: separate from the kubelet) with a
no-op claim handler and the default configuration (calls serialized, like the Go helper). The
parent is the kubelet stand-in: grpcio over the real unix socket, one claim per call.

    python bench/bench_kubelet.py [--calls 2000] [--concurrency 100]

Prints p50/p99/max latency for sequential calls and for N-way concurrent calls, and the plugin's
CPU time per call. Then the same against plain grpclib on plain asyncio answering the same
response (no trio, no dracpu layers): the floor of this machine, to separate dracpu's overhead
from the environment (``--no-baseline`` skips it). Goal: sequential p99 <= 3 ms.
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


def serve_baseline(root: Path) -> None:
    """Child process: plain grpclib on plain asyncio answering the same response (no trio, no
    dracpu layers), to tell this machine's floor apart from dracpu's own overhead."""
    import asyncio

    from grpclib.server import Server

    from generated.k8s.io.kubelet.pkg.apis.dra import v1

    class Baseline(v1.DraPluginBase):  # type: ignore[misc]
        async def node_prepare_resources(self, message: object) -> object:
            return v1.NodePrepareResourcesResponse(
                claims={
                    c.uid: v1.NodePrepareResourceResponse(
                        devices=[v1.Device(pool_name="node", device_name="cpudev000")]
                    )
                    for c in message.claims  # type: ignore[attr-defined]
                }
            )

    async def main() -> None:
        dra = root / "plugins" / "dra.cpu" / "dra.sock"
        dra.parent.mkdir(parents=True)
        server = Server([Baseline()])
        await server.start(path=str(dra))
        (root / "plugins_registry").mkdir()
        (root / "plugins_registry" / "dra.cpu-reg.sock").touch()  # "ready" marker
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(main())


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
        f"{name:<44} n={len(samples):5d}  p50={stats['p50_ms']:7.3f} ms  "
        f"p99={stats['p99_ms']:7.3f} ms  max={stats['max_ms']:7.3f} ms  "
        f"throughput={len(samples) / wall:8.0f}/s"
    )
    return stats


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds consumed so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def run_client(
    socket_path: Path, calls: int, concurrency: int, server_pid: int, label: str
) -> float:
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
    seq_stats = _report(f"{label}: sequential", sequential, time.perf_counter() - start)
    cpu1 = _cpu_seconds(server_pid)
    user_us, sys_us = ((b - a) / calls * 1e6 for a, b in zip(cpu0, cpu1, strict=True))
    print(f"{'':<44} server CPU per call: {user_us:.0f} us user + {sys_us:.0f} us system")

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
    _report(f"{label}: {concurrency}-way concurrent", concurrent, time.perf_counter() - start)
    channel.close()
    return seq_stats["p99_ms"]


def run_server_and_client(mode: str, calls: int, concurrency: int, label: str) -> float | None:
    """Start a server child in ``mode`` under a fresh root, benchmark it, stop it."""
    root = Path(tempfile.mkdtemp(prefix="bench-kl-", dir="/tmp"))
    socket_path = root / "plugins" / "dra.cpu" / "dra.sock"
    ready = root / "plugins_registry" / "dra.cpu-reg.sock"
    child = subprocess.Popen([sys.executable, __file__, "--serve", mode, str(root)], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                print(f"{mode} server process did not start", file=sys.stderr)
                return None
            time.sleep(0.05)
        return run_client(socket_path, calls, concurrency, child.pid, label)
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the plain-grpclib reference run"
    )
    parser.add_argument("--serve", nargs=2, metavar=("MODE", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        mode, root = args.serve
        (serve_baseline if mode == "baseline" else serve)(Path(root))
        return 0

    import grpc

    load = os.getloadavg()[0]
    print(f"grpcio {grpc.__version__} client, {os.cpu_count()} CPUs, load average {load:.1f}")
    p99 = run_server_and_client("dracpu", args.calls, args.concurrency, "dracpu")
    if p99 is None:
        return 1
    if not args.no_baseline:
        run_server_and_client("baseline", args.calls, args.concurrency, "plain grpclib")
    verdict = "met" if p99 <= SEQUENTIAL_GOAL_P99_MS else "MISSED"
    print(f"goal: dracpu sequential p99 <= {SEQUENTIAL_GOAL_P99_MS} ms: {verdict} ({p99:.3f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
