"""Churn keeps dracpu's memory flat: nothing is kept per claim once it is unprepared.

The daemon's prepare path (the handler, the owner with its durable checkpoint, CDI specs, the
claim watch cache and the claim status writer against the fake API server over its transport),
the pod's container created and removed (the pinning policy, as NRI's events drive it)
and its logging (the repeat filter and the in-memory ring, as ``dracpu run`` sets them up) run
warm-up cycles until every bounded table is full, then many more prepare + unprepare cycles of
new claims (a new UID and name each, as pods from a ResourceClaimTemplate bring). tracemalloc
compares the memory allocated by dracpu's own code and by logging before and after: the growth
must stay far under what keeping anything per claim would cost. The repeat filter once kept
each distinct line's full text (about 0.5 KiB a line naming a claim) and failed this.
"""

from __future__ import annotations

import io
import logging
import tracemalloc
from pathlib import Path

import trio

from dracpu.core import node
from dracpu.core.cdi import env_entry
from dracpu.core.pinning import ContainerInfo, PodInfo
from dracpu.core.slices import DeviceMode
from dracpu.daemon.run import build_daemon
from dracpu.kubelet import handler as kh
from dracpu.logs import RecentLines, configure_logging
from tests.daemon.support import NODE, claim, individual, run_config, write_machine
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_http import write_kubeconfig

WARM_UP = 600  # 1,200 lines: past the repeat filter's 1,024 keys and the 200-line ring
MEASURED = 400
MAX_GROWTH = 128 * 1024
"""Over MEASURED cycles (about 330 B a claim): room for a bounded table's dict to resize once
(the repeat filter's two 1,024-key tables, up to about 70 KiB each), far under what keeping a
line per claim costs (0.5 KiB or more a claim)."""


class _Discard(io.TextIOBase):
    """A log stream that keeps nothing (a StringIO would grow with every line)."""

    def write(self, text: str) -> int:
        return len(text)


def _ours(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """The memory allocated (innermost frame) by dracpu's code or by logging."""
    return snapshot.filter_traces(
        [tracemalloc.Filter(True, "*/dracpu/*"), tracemalloc.Filter(True, logging.__file__)]
    )


def _total(snapshot: tracemalloc.Snapshot) -> int:
    return sum(stat.size for stat in snapshot.statistics("filename"))


async def test_prepare_unprepare_churn_keeps_memory_flat(tmp_path: Path) -> None:
    write_machine(tmp_path)
    write_kubeconfig(tmp_path / "kubeconfig", 1)
    fake = FakeApiServer()
    fake.put_object("nodes", {"metadata": {"name": NODE}})
    config = run_config(tmp_path, cpu_device_mode=DeviceMode.INDIVIDUAL)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    for other in handlers:  # pytest's log capture keeps every record: not the daemon's memory
        root.removeHandler(other)
    configure_logging(0, stream=_Discard(), recent=RecentLines(size=200))
    daemon = build_daemon(config, hostname=lambda: NODE, transport=fake.transport, env={})
    handler = daemon.handler()
    sizes: list[tracemalloc.Snapshot] = []

    async def cycles(first: int, count: int) -> None:
        for n in range(first, first + count):
            uid = f"0b6f6a7e-0000-4000-8000-{n:012d}"
            fake.put_object("resourceclaims", claim(uid, [individual("r", "cpudev003")]))
            ref = kh.ClaimRef("ns", f"claim-{uid}", uid)
            got = await handler.prepare([ref])
            prepared = got[uid]
            assert isinstance(prepared, kh.ClaimPrepared), got[uid]
            # The pod's container, as NRI reports it: created with the CDI env, then removed.
            cpus = daemon.owner.state.claims[uid].cpus
            pod = PodInfo(f"pod-{n}", "ns", f"pod-{n}")
            info = ContainerInfo(pod, f"ctr-{n}", "app", env=(env_entry(uid, cpus),))
            created = await daemon.owner.apply(node.ContainerCreated(info))
            assert isinstance(created.reply, node.AdjustContainer), created
            await daemon.owner.apply(node.ContainerRemoved(info.id))
            assert not isinstance((await handler.unprepare([ref]))[uid], kh.ClaimFailed)
            fake.remove_object("resourceclaims", f"ns/claim-{uid}")
            fake.log.clear()  # the fake's own watch history, not dracpu's
            fake.requests.clear()
        await trio.testing.wait_all_tasks_blocked()

    try:
        tracemalloc.start(1)
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.owner.run)
            nursery.start_soon(daemon.cache.run)
            nursery.start_soon(daemon.status_writer.run)
            await cycles(0, WARM_UP)
            sizes.append(_ours(tracemalloc.take_snapshot()))
            await cycles(WARM_UP, MEASURED)
            sizes.append(_ours(tracemalloc.take_snapshot()))
            assert daemon.status_writer.pending == 0
            nursery.cancel_scope.cancel()
        await daemon.client.aclose()
    finally:
        tracemalloc.stop()
        for ours in list(root.handlers):
            root.removeHandler(ours)
        for other in handlers:
            root.addHandler(other)
        root.setLevel(level)
    growth = _total(sizes[1]) - _total(sizes[0])
    top = "; ".join(str(stat) for stat in sizes[1].compare_to(sizes[0], "lineno")[:5])
    assert growth < MAX_GROWTH, (
        f"dracpu's memory grew {growth} bytes over {MEASURED} claims "
        f"({growth / MEASURED:.0f} B per claim); most: {top}"
    )
