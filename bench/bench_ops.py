"""Benchmark: a scrape of the daemon's ``/metrics`` with many prepared claims.

Builds the daemon in-process (``build_daemon``, the in-memory fake API server) on a synthetic
512-CPU machine in individual mode, prepares ``--claims`` one-CPU claims through the daemon's
claim handler (the kubelet's path, one claim per batch), serves the HTTP endpoint on loopback and
scrapes ``/metrics`` over HTTP ``--scrapes`` times. Prints the scrape p50/p99 (HTTP round trip
and the exposition alone) and checks that nothing is computed between scrapes: the allocation
gauges are read from a cache keyed by the (immutable) node state.

    python bench/bench_ops.py [--claims 500] [--scrapes 200]

Goal (issue 12): a scrape <= 5 ms with 500 prepared claims.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import trio  # noqa: E402

from dracpu.core.slices import DeviceMode  # noqa: E402
from dracpu.daemon.run import build_daemon  # noqa: E402
from dracpu.kubelet import handler as kh  # noqa: E402
from dracpu.ops.http import serve_endpoint  # noqa: E402
from tests.daemon.support import NODE, claim, individual, run_config  # noqa: E402
from tests.kube.fake_apiserver import FakeApiServer  # noqa: E402
from tests.kube.fake_http import write_kubeconfig  # noqa: E402
from tests.support.sysfs_tree import SysfsSpec, write_tree  # noqa: E402

MACHINE = SysfsSpec(sockets=2, numa_per_socket=2, cores_per_numa=64, threads=2)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bench(root: Path, claims: int, scrapes: int) -> None:
    write_tree(root, MACHINE)
    write_kubeconfig(root / "kubeconfig", 1)
    fake = FakeApiServer()
    fake.put_object("nodes", {"metadata": {"name": NODE}})
    config = run_config(
        root,
        cpu_device_mode=DeviceMode.INDIVIDUAL,
        bind_address="127.0.0.1:0",
    )
    daemon = build_daemon(config, hostname=lambda: NODE, transport=fake.transport, env={})
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.owner.run)
        nursery.start_soon(daemon.cache.run)
        bound = await nursery.start(
            lambda task_status: serve_endpoint(
                daemon.endpoint(), "127.0.0.1:0", task_status=task_status
            )
        )
        handler = daemon.handler()
        for i in range(claims):
            uid = f"u{i}"
            fake.put_object("resourceclaims", claim(uid, [individual("r", f"cpudev{i:03d}")]))
            result = await handler.prepare([kh.ClaimRef("ns", f"claim-{uid}", uid)])
            assert isinstance(result[uid], kh.ClaimPrepared), result[uid]
        port = bound[0].rsplit(":", 1)[1]
        http: list[float] = []
        render: list[float] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            body = (await client.get("/metrics")).text
            assert f"dra_cpu_resource_claims_active {claims}.0" in body
            for _ in range(scrapes):
                t0 = time.perf_counter()
                response = await client.get("/metrics")
                http.append(time.perf_counter() - t0)
                assert response.status_code == 200
                t0 = time.perf_counter()
                daemon.metrics.render()
                render.append(time.perf_counter() - t0)
        state = daemon.owner.state
        cached = daemon._counts_for
        assert cached is not None
        assert cached[0] is state  # computed once for this state
        print(f"prepared claims: {len(state.claims)}; scrape body {len(body)} bytes")
        print(
            f"/metrics over HTTP: p50 {statistics.median(http) * 1e3:.2f} ms, "
            f"p99 {pct(http, 0.99) * 1e3:.2f} ms (goal <= 5 ms)"
        )
        print(
            f"exposition alone:   p50 {statistics.median(render) * 1e3:.2f} ms, "
            f"p99 {pct(render, 0.99) * 1e3:.2f} ms"
        )
        nursery.cancel_scope.cancel()
    await daemon.client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=500)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bo-", dir="/tmp"))
    try:
        trio.run(bench, root, args.claims, args.scrapes)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
