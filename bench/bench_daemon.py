"""Benchmark: ``dracpu run`` end to end, grpcio as the kubelet, the fake API server over HTTP.

The daemon runs as a child process (``python -m dracpu run``) on a synthetic 80-CPU machine
(2 sockets x 2 NUMA nodes x 10 cores x 2 threads), grouped by NUMA node, with a durable
checkpoint and CDI specs in temp dirs. This process serves the fake API server
(tests/kube/fake_http.py) and plays the kubelet with grpcio.

    python bench/bench_daemon.py [--claims 300] [--rounds 3] [--tmpfs]

Prints:
- start -> DRA socket, -> registered (this process answers GetInfo and reports success as the
  kubelet does), -> first ResourceSlice stored in the API;
- NodePrepareResources, 1 claim of 2 CPUs, paced (one at a time, claim already in the watch
  cache): p50/p99, and the durable checkpoint write's share (the daemon's own effect timings,
  and a separate p50/p99 of CheckpointStore.write on the same filesystem);
- sustained sequential prepares (claims/s), each claim 1 CPU, and 76 claims from 76 threads;
- idle RSS of the daemon.

Goals (issue 9): prepare p50 <= 1.5 ms, p99 <= 5 ms; >= 300 claims/s sequential;
start -> registered and first slice <= 1 s; idle RSS <= 45 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import trio  # noqa: E402

from dracpu.checkpoint import CheckpointStore  # noqa: E402
from dracpu.daemon.status import read_status  # noqa: E402
from tests.daemon.support import NODE, claim, dra_api, grouped  # noqa: E402
from tests.kube.fake_apiserver import FakeApiServer  # noqa: E402
from tests.kube.fake_http import serve_fake_http, write_kubeconfig  # noqa: E402
from tests.support.grpcio_protos import load_grpc_modules  # noqa: E402
from tests.support.sysfs_tree import SysfsSpec, write_tree  # noqa: E402

MACHINE = SysfsSpec(sockets=2, numa_per_socket=2, cores_per_numa=10, threads=2)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Kubelet:
    """grpcio stubs over the daemon's sockets (blocking; called from worker threads)."""

    def __init__(self, root: Path) -> None:
        self.api = dra_api("v1")
        self.reg_pb2, self.reg_grpc = load_grpc_modules(
            REPO / "protos", "k8s.io/kubelet/pkg/apis/pluginregistration/v1/api.proto"
        )
        self.dra_socket = root / "kubelet" / "plugins" / "dra.cpu" / "dra.sock"
        self.reg_socket = root / "kubelet" / "plugins_registry" / "dra.cpu-reg.sock"
        self._channel: grpc.Channel | None = None

    def register(self) -> None:
        with grpc.insecure_channel(f"unix://{self.reg_socket}") as channel:
            stub = self.reg_grpc.RegistrationStub(channel)
            stub.GetInfo(self.reg_pb2.InfoRequest(), timeout=5)
            stub.NotifyRegistrationStatus(
                self.reg_pb2.RegistrationStatus(plugin_registered=True), timeout=5
            )

    def stub(self) -> Any:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{self.dra_socket}")
        return self.api.grpc.DRAPluginStub(self._channel)

    def call(self, op: str, uids: list[str]) -> tuple[float, Any]:
        pb = self.api.pb2
        claims = [pb.Claim(namespace="bench", name=f"claim-{u}", uid=u) for u in uids]
        start = time.perf_counter()
        if op == "prepare":
            response = self.stub().NodePrepareResources(
                pb.NodePrepareResourcesRequest(claims=claims), timeout=30
            )
        else:
            response = self.stub().NodeUnprepareResources(
                pb.NodeUnprepareResourcesRequest(claims=claims), timeout=30
            )
        elapsed = time.perf_counter() - start
        for uid in uids:
            if response.claims[uid].error:
                raise SystemExit(f"{op} {uid}: {response.claims[uid].error}")
        return elapsed, response


async def bench(args: argparse.Namespace, root: Path) -> None:
    write_tree(root, MACHINE)
    fake = FakeApiServer()
    fake.put_object("nodes", {"metadata": {"name": NODE}})
    kubelet = Kubelet(root)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_fake_http, fake)
        write_kubeconfig(root / "kubeconfig", port)
        argv = [
            sys.executable,
            "-m",
            "dracpu",
            "run",
            "--bind-address=127.0.0.1:0",
            f"--kubeconfig={root / 'kubeconfig'}",
            f"--sysfs-root={root / 'sys'}",
            f"--kubelet-root-dir={root / 'kubelet'}",
            f"--cdi-dir={root / 'cdi'}",
            f"--state-dir={root / 'state'}",
            f"--hostname-override={NODE}",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO), "DRACPU_LOG_LEVEL": "WARNING"}
        log = os.open(root / "daemon.log", os.O_WRONLY | os.O_CREAT, 0o644)
        t0 = time.perf_counter()
        proc = await trio.lowlevel.open_process(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=REPO
        )
        os.close(log)
        try:
            await run(args, root, fake, kubelet, proc, t0)
        finally:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(35):
                await proc.wait()
            nursery.cancel_scope.cancel()


async def run(
    args: argparse.Namespace,
    root: Path,
    fake: FakeApiServer,
    kubelet: Kubelet,
    proc: trio.Process,
    t0: float,
) -> None:
    with trio.fail_after(60):
        while not kubelet.reg_socket.exists():
            if proc.poll() is not None:
                raise SystemExit((root / "daemon.log").read_text()[-3000:])
            await trio.sleep(0.002)
    t_sockets = time.perf_counter() - t0
    await trio.to_thread.run_sync(kubelet.register)
    t_registered = time.perf_counter() - t0
    with trio.fail_after(60):
        while not fake.objects.get("resourceslices"):  # noqa: ASYNC110 (state of another task)
            await trio.sleep(0.002)
    t_slices = time.perf_counter() - t0
    print(
        f"start: sockets {t_sockets * 1000:.0f} ms, registered {t_registered * 1000:.0f} ms, "
        f"first slice stored {t_slices * 1000:.0f} ms (goal <= 1000 ms; includes interpreter "
        f"start and imports)"
    )

    # Paced single-claim prepares (2 CPUs of one NUMA node), each unprepared after.
    for i in range(args.claims):
        fake.put_object(
            "resourceclaims",
            claim(f"p{i}", [grouped("req", f"cpudevnuma{i % 4:03d}", 2)], namespace="bench"),
        )
    await trio.sleep(0.5)  # Let the watch deliver them to the claim cache.
    before = await trio.to_thread.run_sync(read_status, root / "state")
    prepare: list[float] = []
    unprepare: list[float] = []
    for i in range(args.claims):
        elapsed, _ = await trio.to_thread.run_sync(kubelet.call, "prepare", [f"p{i}"])
        prepare.append(elapsed)
        elapsed, _ = await trio.to_thread.run_sync(kubelet.call, "unprepare", [f"p{i}"])
        unprepare.append(elapsed)
        await trio.sleep(0.002)
    after = await trio.to_thread.run_sync(read_status, root / "state")
    events = after["effects"]["events"] - before["effects"]["events"]
    ck = after["effects"]["checkpointSeconds"] - before["effects"]["checkpointSeconds"]
    writes = after["effects"]["checkpointWrites"] - before["effects"]["checkpointWrites"]
    total = after["effects"]["totalSeconds"] - before["effects"]["totalSeconds"]
    p50, p99 = pct(prepare, 0.5) * 1000, pct(prepare, 0.99) * 1000
    print(
        f"NodePrepareResources, 1 claim grouped, checkpoint + CDI: p50 {p50:.2f} ms, "
        f"p99 {p99:.2f} ms, max {max(prepare) * 1000:.2f} ms over {len(prepare)} "
        f"(goal p50 <= 1.5, p99 <= 5)"
    )
    print(
        f"  owner: {(total + ck) / max(events, 1) * 1000:.3f} ms per event, of which the "
        f"durable checkpoint {ck / max(writes, 1) * 1000:.3f} ms per write ({writes} writes "
        f"for {events} events; step + CDI + the rest {total / max(events, 1) * 1000:.3f} ms)"
    )
    print(
        f"  cache hits {after['claimCache']['hits']}, misses {after['claimCache']['misses']}; "
        f"NodeUnprepareResources p50 {pct(unprepare, 0.5) * 1000:.2f} ms"
    )
    store = CheckpointStore(root / "fsync-probe")
    body = {"claims": [{"uid": f"x{i}", "cpus": "1"} for i in range(8)]}
    durable = []
    for _ in range(100):
        s = time.perf_counter()
        store.write(body)
        durable.append(time.perf_counter() - s)
    print(
        f"  CheckpointStore.write alone (fsync + rename + dir fsync): p50 "
        f"{pct(durable, 0.5) * 1000:.3f} ms, p99 {pct(durable, 0.99) * 1000:.3f} ms"
    )

    # Sustained sequential prepares: 1-CPU claims back to back, unprepared in one batch.
    limiter = trio.CapacityLimiter(100)
    rates = []
    for r in range(args.rounds):
        uids = [f"s{r}-{i}" for i in range(60)]
        for n, uid in enumerate(uids):
            fake.put_object(
                "resourceclaims",
                claim(uid, [grouped("req", f"cpudevnuma{n % 4:03d}", 1)], namespace="bench"),
            )
        await trio.sleep(0.5)

        def burst(uids: list[str] = uids) -> float:
            start = time.perf_counter()
            for uid in uids:
                kubelet.call("prepare", [uid])
            return time.perf_counter() - start

        took = await trio.to_thread.run_sync(burst)
        rates.append(len(uids) / took)
        await trio.to_thread.run_sync(kubelet.call, "unprepare", uids)
    # Concurrent: 76 pods' claims (1 CPU each) prepared from 76 threads at once.
    uids = [f"c{i}" for i in range(76)]
    for n, uid in enumerate(uids):
        fake.put_object(
            "resourceclaims",
            claim(uid, [grouped("req", f"cpudevnuma{n % 4:03d}", 1)], namespace="bench"),
        )
    await trio.sleep(0.5)
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for uid in uids:
            nursery.start_soon(
                partial(trio.to_thread.run_sync, kubelet.call, "prepare", [uid], limiter=limiter)
            )
    concurrent = len(uids) / (time.perf_counter() - start)
    await trio.to_thread.run_sync(kubelet.call, "unprepare", uids)
    print(f"{len(uids)} claims prepared concurrently: {concurrent:.0f} claims/s (goal >= 300)")
    print(
        f"sustained sequential prepares: {statistics.median(rates):.0f} claims/s "
        f"(rounds: {', '.join(f'{x:.0f}' for x in rates)}; goal >= 300)"
    )
    await trio.sleep(3)
    print(f"idle RSS: {rss_kib(proc.pid) / 1024:.1f} MiB (goal <= 45 MiB)")
    status = await trio.to_thread.run_sync(read_status, root / "state")
    print(
        "daemon timeline (s from its own start): "
        + json.dumps(status.get("timeline", {}), sort_keys=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tmpfs",
        action="store_true",
        help="put the state and CDI dirs on /dev/shm: fsync is free, showing dracpu's own cost",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bd-", dir="/dev/shm" if args.tmpfs else "/tmp"))
    print(f"state and CDI dirs under {root} ({'tmpfs' if args.tmpfs else 'disk'})")
    try:
        trio.run(bench, args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
