"""Benchmark: the daemon under abuse, in-process (grpcio as the kubelet on the real sockets, the
in-memory API server), on a synthetic 80-CPU machine grouped by NUMA node.

    python bench/bench_reliability.py [--rounds 5] [--idle 200]

Prints:
- a NodePrepareResources batch of 1,000 claims (1 CPU each; 80 fit, the rest fail alone) and
  the matching unprepare batch: latency per round, and this process's RSS after each round
  (flat = no memory kept per bad claim);
- the p50/p99 of a single good prepare+unprepare, alone and with ``--idle`` idle connections
  open on each of the DRA and registration sockets (HTTP/2 preface sent, then silence);
- a full state dir (64 KiB tmpfs, root only): time for the refused prepare, and for the first
  prepare after the disk recovered (no restart).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.daemon.support import claim, dra_api, grouped, short_dir  # noqa: E402
from tests.daemon.test_daemon import Running, start  # noqa: E402
from tests.kube.fake_apiserver import FakeApiServer  # noqa: E402
from tests.kube.fake_http import write_kubeconfig  # noqa: E402
from tests.kube.waiting import wait_for  # noqa: E402
from tests.reliability.support import fill, small_tmpfs  # noqa: E402
from tests.reliability.test_grpc_abuse import idle_connections  # noqa: E402
from tests.support.sysfs_tree import SysfsSpec, write_tree  # noqa: E402

MACHINE = SysfsSpec(sockets=2, numa_per_socket=2, cores_per_numa=10, threads=2)
API = dra_api("v1")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def batches(r: Running, rounds: int) -> None:
    uids = [f"b{i:04d}" for i in range(1000)]
    for i, uid in enumerate(uids):
        r.put_claim(claim(uid, [grouped("req", f"cpudevnuma00{i % 4}", 1)]))
    await wait_for(lambda: len(r.daemon.cache.claims()) >= 1000, 30)
    for n in range(rounds):
        t0 = time.perf_counter()
        response = await r.call(API, "prepare", *uids)
        t1 = time.perf_counter()
        ok = sum(1 for u in uids if not response.claims[u].error)
        await r.call(API, "unprepare", *uids)
        t2 = time.perf_counter()
        print(
            f"round {n + 1}: 1000-claim prepare {1000 * (t1 - t0):.0f} ms ({ok} prepared), "
            f"unprepare {1000 * (t2 - t1):.0f} ms, RSS {rss_mib():.1f} MiB"
        )


async def single(r: Running, count: int) -> list[float]:
    r.put_claim(claim("one", [grouped("req", "cpudevnuma001", 2)]))
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        await r.call(API, "prepare", "one")
        await r.call(API, "unprepare", "one")
        times.append(1000 * (time.perf_counter() - t0))
    return times


async def idle(r: Running, root: Path, count: int) -> None:
    alone = await single(r, 40)
    assert r.daemon.plugin_config is not None
    paths = r.daemon.plugin_config.paths()
    with ExitStack() as stack:
        for path in (paths.dra_socket, paths.registration_socket):
            await trio.to_thread.run_sync(
                partial(idle_connections, path, count, stack, preface=True)
            )
        busy = await single(r, 40)
    for label, values in (("alone", alone), (f"{count} idle per socket", busy)):
        print(
            f"prepare+unprepare ({label}): p50 {statistics.median(values):.1f} ms, "
            f"p99 {pct(values, 0.99):.1f} ms"
        )


async def full_disk(nursery: trio.Nursery, root: Path, fake: FakeApiServer) -> None:
    if os.geteuid() != 0:
        print("full disk: skipped (needs root to mount a tmpfs)")
        return
    with small_tmpfs(root / "state") as state:  # Over the first run's dir: a fresh one.
        r = await start(nursery, root, fake)
        r.put_claim(claim("d1", [grouped("req", "cpudevnuma000", 1)]))
        filler = fill(state)
        t0 = time.perf_counter()
        refused = await r.call(API, "prepare", "d1")
        t1 = time.perf_counter()
        filler.unlink()
        ok = await r.call(API, "prepare", "d1")
        t2 = time.perf_counter()
        assert refused.claims["d1"].error
        assert not ok.claims["d1"].error
        print(
            f"full disk: prepare refused in {1000 * (t1 - t0):.1f} ms; after recovery the next "
            f"prepare succeeded in {1000 * (t2 - t1):.1f} ms (restarts: {r.daemon.restarts})"
        )
        r.scope.cancel()
        await trio.sleep(0.1)


async def main(args: argparse.Namespace) -> None:
    with short_dir("br-") as root:
        write_tree(root, MACHINE)
        write_kubeconfig(root / "kubeconfig", 1)
        fake = FakeApiServer()
        fake.put_object("nodes", {"metadata": {"name": "node-a"}})
        async with trio.open_nursery() as nursery:
            r = await start(nursery, root, fake)
            await batches(r, args.rounds)
            await idle(r, root, args.idle)
            r.scope.cancel()
            await trio.sleep(0.1)
            await full_disk(nursery, root, fake)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle", type=int, default=200)
    trio.run(main, parser.parse_args())
