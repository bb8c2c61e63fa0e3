"""Benchmark: from a real kernel CPU uevent to the republished ResourceSlices.

Runs the whole daemon in-process (``run_daemon``: uevent listener, owner, publisher) over a
sysfs copy of a 16-CPU, 2-NUMA-node machine, with the in-memory fake API server. Each round
changes CPU 5's ``online`` in the copy, makes the kernel emit a real uevent (``change`` written
to ``/sys/devices/system/cpu/cpu0/uevent``, which needs root) and times until the published
grouped device ``cpudevnuma001`` shows the new capacity. Side by side, the floor: the same
uevent received on a bare ``NETLINK_KOBJECT_UEVENT`` socket, and the daemon's debounce window
(``uevent_quiet``), which the figure includes on purpose (bursts are batched).

    python bench/bench_hotplug.py [--rounds 20]

Goal (issue 12): uevent -> republished slices <= 1 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from dracpu.daemon.run import build_daemon, run_daemon  # noqa: E402
from dracpu.uevents import open_uevent_socket, parse_uevent  # noqa: E402
from tests.daemon.support import (  # noqa: E402
    KERNEL_UEVENT,
    NODE,
    kernel_uevent,
    run_config,
    set_online,
    slice_cpus,
    write_machine,
)
from tests.kube.fake_apiserver import FakeApiServer  # noqa: E402
from tests.kube.fake_http import write_kubeconfig  # noqa: E402
from tests.kube.waiting import wait_for  # noqa: E402

DEVICE = "cpudevnuma001"


async def floor(rounds: int) -> list[float]:
    """A bare netlink socket: write ``change``, wait for the CPU uevent to arrive."""
    sock = await open_uevent_socket()
    took: list[float] = []
    with sock:
        for _ in range(rounds):
            began = time.perf_counter()
            await trio.to_thread.run_sync(kernel_uevent)
            with trio.fail_after(5):
                while True:
                    event = parse_uevent(await sock.recv(65536))
                    if event is not None and event.cpu == 0:
                        break
            took.append(time.perf_counter() - began)
    return took


async def bench(root: Path, rounds: int) -> None:
    write_machine(root)
    write_kubeconfig(root / "kubeconfig", 1)
    fake = FakeApiServer()
    fake.put_object("nodes", {"metadata": {"name": NODE}})
    config = run_config(
        root,
        nri_socket=root / "nri.sock",
        cgroup_root=root / "cgroup",
        bind_address="127.0.0.1:0",
    )
    daemon = build_daemon(config, hostname=lambda: NODE, transport=fake.transport, env={})
    took: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_daemon, daemon)
        await wait_for(lambda: daemon.hotplug != "starting", 10)
        if daemon.hotplug != "listening":
            raise SystemExit(f"kernel uevents unavailable here: {daemon.hotplug}")
        await wait_for(daemon.publisher.in_sync.is_set, 10)
        for i in range(rounds):
            online = i % 2 == 1
            set_online(root, "0-15" if online else "0-4,6-15", cpu=5, online=online)
            want = 8 if online else 7
            began = time.perf_counter()
            await trio.to_thread.run_sync(kernel_uevent)
            await wait_for(lambda want=want: slice_cpus(fake, DEVICE) == want, 10)  # type: ignore[misc]
            took.append(time.perf_counter() - began)
            await trio.sleep(0.3)  # past the debounce window: one round, one batch
        nursery.cancel_scope.cancel()
    await daemon.client.aclose()
    bare = await floor(rounds)
    print(f"rounds: {rounds} (CPU 5 offline/online alternately); load {os.getloadavg()[0]:.2f}")
    print(
        f"uevent -> republished slices: p50 {statistics.median(took) * 1e3:.1f} ms, "
        f"max {max(took) * 1e3:.1f} ms (goal <= 1000 ms)"
    )
    print(f"  of which debounce window:   {daemon.uevent_quiet * 1e3:.0f} ms")
    print(
        f"floor, bare netlink socket:   p50 {statistics.median(bare) * 1e3:.2f} ms, "
        f"max {max(bare) * 1e3:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0 or not os.access(KERNEL_UEVENT, os.W_OK):
        raise SystemExit(f"needs root to write {KERNEL_UEVENT} (the kernel then emits a uevent)")
    root = Path(tempfile.mkdtemp(prefix="bh-", dir="/tmp"))
    try:
        trio.run(bench, root, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
