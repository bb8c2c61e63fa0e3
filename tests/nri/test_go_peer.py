"""The NRI plugin against the real runtime side of NRI (containerd/nri pkg/adaptation).

Each test runs at every pinned NRI version (v0.8.0: containerd 2.0/2.1; v0.11.0: containerd
2.2 and CRI-O 1.35/1.36; v0.12.0: containerd 2.3, dedicated event RPCs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from dracpu.errors import ProtocolError
from dracpu.nri import DEFAULT_EVENTS, Backoff, NriPlugin, RpcStatusError
from generated.nri.pkg.api import v1alpha1 as api
from tests.nri.peer import NriPeer, open_peer
from tests.nri.recording_handler import RecordingHandler, cpu_update

CONNECTED = "connected and synchronized"


@asynccontextmanager
async def connected(
    binary: Path,
    socket_path: str,
    handler: RecordingHandler,
    *,
    request_timeout_ms: int = 0,
    populate: dict[str, int] | None = None,
    events: frozenset[api.Event] = DEFAULT_EVENTS,
) -> AsyncIterator[tuple[NriPeer, NriPlugin, trio.Nursery]]:
    """A peer serving ``socket_path`` with the plugin registered and synchronized."""
    async with trio.open_nursery() as nursery:
        peer = await open_peer(nursery, binary)
        if populate:
            await peer.command("populate", **populate)
        await peer.command("add-pod", pod="p0")
        await peer.command("start", socket=socket_path, request_timeout_ms=request_timeout_ms)
        plugin = NriPlugin(
            handler,
            name="dra.cpu",
            index="50",
            socket_path=socket_path,
            events=events,
            backoff=Backoff(initial=0.05, maximum=0.5),
        )
        handler.plugin = plugin
        await nursery.start(plugin.run)
        await peer.wait_log(CONNECTED)
        yield peer, plugin, nursery
        nursery.cancel_scope.cancel()


def cpus_of(update: dict[str, Any]) -> str:
    return str(update["linux"]["resources"]["cpu"]["cpus"])


def adjusted_cpus(response: dict[str, Any]) -> str:
    """The cpuset a CreateContainerResponse sets ("" when none; the runtime fills empty dicts)."""
    adjust = response.get("adjust", {})
    return str(adjust.get("linux", {}).get("resources", {}).get("cpu", {}).get("cpus", ""))


async def test_register_and_configure(nri_peer_binary: Path, socket_path: str) -> None:
    handler = RecordingHandler()
    with trio.fail_after(30):
        async with connected(nri_peer_binary, socket_path, handler) as (peer, plugin, _):
            assert plugin.connected
            [info] = handler.configured
            assert info.name == "containerd"
            assert info.version == "v2.99.0-nripeer"
            assert info.request_timeout == 2.0
            assert api.Event.CREATE_CONTAINER in info.events
            assert handler.syncs == [(1, 0)]
            assert any("50-dra.cpu" in line for line in peer.logs())
            assert not [m for m in peer.logs() if "invalid plugin events" in m]


async def test_newer_events_are_only_requested_from_runtimes_that_know_them(
    nri_peer_binary: Path, socket_path: str
) -> None:
    handler = RecordingHandler()
    wanted = DEFAULT_EVENTS | {api.Event.UPDATE_POD_SANDBOX, api.Event.POST_UPDATE_POD_SANDBOX}
    with trio.fail_after(30):
        async with connected(nri_peer_binary, socket_path, handler, events=wanted) as (peer, _, _):
            [info] = handler.configured
            await peer.command("create", pod="p0", id="c", name="c", env=["DRA_CPUSET_x=1"])
    # Only v0.12+ tells its NRI version; older runtimes reject bits beyond their Event.LAST.
    knows_new_events = nri_peer_binary.parent.name.startswith("nri-v0.12")
    assert info.nri_version == ("v0.12.0" if knows_new_events else "")
    assert (api.Event.UPDATE_POD_SANDBOX in info.events) == knows_new_events
    assert info.events >= DEFAULT_EVENTS
    assert not [m for m in peer.logs() if "invalid plugin events" in m]


async def test_synchronize_more_than_4mib(nri_peer_binary: Path, socket_path: str) -> None:
    handler = RecordingHandler(shared_cpus="4-7")
    populate = {"count": 3000, "annotation_bytes": 2000}  # ~6.2 MB of state: chunked sync
    # One request timeout covers all chunks; decoding 6 MB in pure-Python protobuf takes ~0.5 s
    # (more on a loaded CI machine), so this test allows 10 s instead of the default 2 s.
    with trio.fail_after(60):
        async with connected(
            nri_peer_binary, socket_path, handler, request_timeout_ms=10_000, populate=populate
        ) as (peer, _plugin, _):
            assert handler.syncs == [(65, 3000)]
            # The first "synced" event is the runtime's own start-up sync with no plugins.
            synced = [e for e in peer.events if e.get("ev") == "synced"][-1]
            assert synced["containers"] == 3000
            assert len(synced["updates"]) == 3000
            assert {cpus_of(u) for u in synced["updates"]} == {"4-7"}


async def test_create_container_adjustment(nri_peer_binary: Path, socket_path: str) -> None:
    handler = RecordingHandler(shared_cpus="0-1")
    with trio.fail_after(30):
        async with connected(nri_peer_binary, socket_path, handler) as (peer, _, _):
            plain = await peer.command("create", pod="p0", id="c-shared", name="shared")
            assert adjusted_cpus(plain) == ""
            pinned = await peer.command(
                "create",
                pod="p0",
                id="c-pinned",
                name="pinned",
                env=["PATH=/bin", "DRA_CPUSET_claim1=2-3"],
            )
            assert adjusted_cpus(pinned) == "2-3"
            assert [(u["container_id"], cpus_of(u)) for u in pinned["update"]] == [
                ("c-shared", "0-1")
            ]
            assert ("create", "c-pinned") in handler.calls


async def test_container_lifecycle_events(nri_peer_binary: Path, socket_path: str) -> None:
    handler = RecordingHandler()
    with trio.fail_after(30):
        async with connected(nri_peer_binary, socket_path, handler) as (peer, _, _):
            await peer.command("run-pod", pod="p1")
            await peer.command("create", pod="p1", id="a", name="a", env=["DRA_CPUSET_x=5"])
            await peer.command("create", pod="p1", id="b", name="b")
            await peer.command("start-container", id="a")
            updated = await peer.command("update", id="a", cpus="0-7")
            assert [(u["container_id"], cpus_of(u)) for u in updated["update"]] == [("a", "5")]
            stopped = await peer.command("stop-container", id="a")
            assert [(u["container_id"], cpus_of(u)) for u in stopped["update"]] == [("b", "0-3")]
            await peer.command("remove-container", id="a")
            assert handler.calls == [
                ("RUN_POD_SANDBOX", "p1"),
                ("create", "a"),
                ("create", "b"),
                ("START_CONTAINER", "a"),
                ("update", "a"),
                ("stop", "a"),
                ("REMOVE_CONTAINER", "a"),
            ]
            # v0.12 would log a deprecation warning had we answered a dedicated RPC Unimplemented.
            assert not [m for m in peer.logs() if "deprecat" in m.lower()]


async def test_update_containers_from_plugin(nri_peer_binary: Path, socket_path: str) -> None:
    handler = RecordingHandler()
    with trio.fail_after(30):
        async with connected(nri_peer_binary, socket_path, handler) as (peer, plugin, _):
            failed = await plugin.update_containers([cpu_update("c1", "1"), cpu_update("c2", "2")])
            assert failed == []
            i = await peer.wait_event(lambda e: e.get("ev") == "update-containers")
            got = peer.events[i]["updates"]
            assert [(u["container_id"], cpus_of(u)) for u in got] == [("c1", "1"), ("c2", "2")]
            with pytest.raises(RpcStatusError) as info:
                await plugin.update_containers([cpu_update("fail-1", "3")])
            assert info.value.code == 2
            ok = await plugin.update_containers(
                [api.ContainerUpdate(container_id="fail-2", ignore_failure=True)]
            )
            assert ok == []
            # Awaiting it inside a handler would deadlock the runtime: refused, creation goes on.
            await peer.command("create", pod="p0", id="n1", name="nested-update")
            assert [type(e) for e in handler.errors] == [ProtocolError]


async def test_handler_slower_than_request_timeout(nri_peer_binary: Path, socket_path: str) -> None:
    handler = RecordingHandler(slow_seconds=5.0)
    with trio.fail_after(30):
        async with connected(nri_peer_binary, socket_path, handler, request_timeout_ms=1000) as (
            peer,
            plugin,
            _,
        ):
            mark = len(peer.events)
            sessions = plugin.sessions_synchronized
            # The runtime gives up after 1 s, closes the plugin, creates without adjustment.
            rsp = await peer.command(
                "create", pod="p0", id="slow1", name="slow", env=["DRA_CPUSET_c=3"]
            )
            assert adjusted_cpus(rsp) == ""
            await peer.wait_log("closing plugin", start=mark)
            # We see the connection drop, cancel the handler, redial and resynchronize.
            await peer.wait_log(CONNECTED, start=mark)
            assert plugin.sessions_synchronized == sessions + 1
            assert handler.cancelled == ["slow1"]
            assert handler.syncs[-1] == (1, 1)
            pinned = await peer.command(
                "create", pod="p0", id="fast1", name="fast", env=["DRA_CPUSET_c=3"]
            )
            assert adjusted_cpus(pinned) == "3"


async def test_runtime_restart_reconnects(nri_peer_binary: Path, socket_path: str) -> None:
    handler = RecordingHandler()
    with trio.fail_after(30):
        async with connected(nri_peer_binary, socket_path, handler) as (peer, plugin, nursery):
            await peer.command("create", pod="p0", id="c0", name="c0")
            sessions = plugin.sessions_synchronized
            peer.kill()
            await peer.process.wait()
            await trio.sleep(0.3)  # the plugin sees EOF and redials a dead socket meanwhile
            assert not plugin.connected
            restarted = await open_peer(nursery, nri_peer_binary)
            await restarted.command("populate", count=4, annotation_bytes=10)
            await restarted.command("add-pod", pod="p0")
            await restarted.command("start", socket=socket_path)
            await restarted.wait_log(CONNECTED)
            assert plugin.sessions_synchronized == sessions + 1
            assert handler.syncs[-1] == (5, 4)
            rsp = await restarted.command(
                "create", pod="p0", id="c1", name="c1", env=["DRA_CPUSET_a=6"]
            )
            assert adjusted_cpus(rsp) == "6"
