"""The reflector and client against hostile API servers on a real loopback socket.

Each test is a defect of issue 8 reproduced on a real HTTP connection: a watch storm (every watch
ends after one bookmark), type-confused and deeply nested bodies, and bodies or watch lines with
no end. The reflector must survive, say what was wrong, back off, and work again once the server
behaves.
"""

from __future__ import annotations

import json
import random
import time
from functools import partial
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dracpu.backoff import Backoff
from dracpu.kube.claims import allocated_to_node
from dracpu.kube.client import KubeClient, RetryPolicy
from dracpu.kube.config import KubeConfig
from dracpu.kube.errors import BodyTooLargeError
from dracpu.kube.resources import NODES, RESOURCE_CLAIMS
from dracpu.kube.watch import Reflector
from tests.kube.http_peer import GoodApi, HttpPeer, HttpRequest, bookmark, send_body, send_head
from tests.kube.waiting import wait_for

FAST = Backoff(initial=0.05, maximum=0.2)
LIST_OK: dict[str, Any] = {"kind": "List", "metadata": {"resourceVersion": "7"}, "items": []}


def client_for(url: str, **kw: Any) -> KubeClient:
    return KubeClient(
        KubeConfig(server=url, origin="test"),
        retry=RetryPolicy(attempts=1),
        rng=random.Random(1),
        timeout=5.0,
        **kw,
    )


async def test_watch_storm_is_paced_by_backoff() -> None:
    """Every watch yields one BOOKMARK and ends: the reflector must not reopen at once."""

    async def storm(request: HttpRequest, stream: trio.SocketStream) -> None:
        if request.is_watch:
            await send_head(stream)
            await stream.send_all(bookmark("8"))
            return
        await send_body(stream, LIST_OK)

    peer = HttpPeer(storm)
    async with trio.open_nursery() as nursery:
        url = await peer.start(nursery)
        async with client_for(url) as client:
            reflector = Reflector(client, NODES, rng=random.Random(3))  # default backoff
            nursery.start_soon(reflector.run)
            await reflector.synced.wait()
            start = time.monotonic()
            await trio.sleep(3.0)
            watches = peer.count(watch=True, since=start)
            health = reflector.health()
            nursery.cancel_scope.cancel()
    # Unpaced this is ~1,500 requests/s; with 0.5 s doubling backoff, a handful in 3 s.
    assert watches <= 8, f"{watches / 3.0:.0f} watch requests/s"
    assert health.early_watch_ends >= 2
    assert health.failures >= 2
    assert reflector.lists == 1  # events arrived: resume, do not relist
    assert "minimum lifetime" in (health.last_error or "")


HOSTILE_LISTS: list[tuple[str, bytes, str]] = [
    ("array", b"[]", "bad body at (body): is an array"),
    ("items-number", b'{"items": 5, "metadata": {}}', "bad body at items: is a number"),
    ("metadata-string", b'{"metadata": "x", "items": []}', "bad body at metadata: is a string"),
    (
        "item-metadata-string",
        b'{"metadata": {}, "items": [{"metadata": "x"}]}',
        "bad body at items[0].metadata",
    ),
    ("item-unnamed", b'{"metadata": {}, "items": [{}]}', "items[0].metadata.name: is missing"),
    ("deep", b"[" * 100_000 + b"]" * 100_000, "nested deeper than"),
    ("deep-object", b'{"a":' * 500 + b"1" + b"}" * 500, "nested deeper than"),
    ("not-json", b"<html>proxy error</html>", "not JSON"),
    ("rv-number", b'{"metadata": {"resourceVersion": 5}, "items": []}', "resourceVersion"),
]


@pytest.mark.parametrize(("body", "expected"), [h[1:] for h in HOSTILE_LISTS],
                         ids=[h[0] for h in HOSTILE_LISTS])  # fmt: skip
async def test_type_confused_list_bodies_back_off_then_recover(body: bytes, expected: str) -> None:
    bad = True
    good = GoodApi()

    async def script(request: HttpRequest, stream: trio.SocketStream) -> None:
        if bad and not request.is_watch:
            await send_body(stream, body)
            return
        await good(request, stream)

    peer = HttpPeer(script)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await peer.start(nursery)
            async with client_for(url) as client:
                reflector = Reflector(client, NODES, backoff=FAST, rng=random.Random(3))
                nursery.start_soon(reflector.run)
                await wait_for(lambda: peer.count() >= 3)
                assert expected in (reflector.last_error or ""), reflector.last_error
                assert not reflector.synced.is_set()
                bad = False
                await reflector.synced.wait()
                assert set(reflector.store) == {"a"}
                nursery.cancel_scope.cancel()


HOSTILE_LINES: list[tuple[str, bytes, str]] = [
    ("array", b"[1, 2]\n", "bad body at (body): is an array"),
    ("object-string", b'{"type": "ADDED", "object": "x"}\n', "bad body at object: is a string"),
    (
        "metadata-list",
        b'{"type": "MODIFIED", "object": {"metadata": [1]}}\n',
        "bad body at object.metadata: is an array",
    ),
    ("type-number", b'{"type": 3, "object": {}}\n', "bad body at type: is a number"),
    ("deep", b"[" * 50_000 + b"]" * 50_000 + b"\n", "nested deeper than"),
    ("unknown-type", b'{"type": "HELLO", "object": {"metadata": {"name": "n"}}}\n', "HELLO"),
]


@pytest.mark.parametrize(("line", "expected"), [h[1:] for h in HOSTILE_LINES],
                         ids=[h[0] for h in HOSTILE_LINES])  # fmt: skip
async def test_type_confused_watch_events_back_off_then_recover(line: bytes, expected: str) -> None:
    bad = True
    good = GoodApi()

    async def script(request: HttpRequest, stream: trio.SocketStream) -> None:
        if bad and request.is_watch:
            await send_head(stream)
            await stream.send_all(line)
            await trio.sleep(5)
            return
        await good(request, stream)

    peer = HttpPeer(script)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await peer.start(nursery)
            async with client_for(url) as client:
                reflector = Reflector(client, NODES, backoff=FAST, rng=random.Random(3))
                nursery.start_soon(reflector.run)
                await wait_for(lambda: peer.count(watch=True) >= 2)
                assert expected in (reflector.last_error or ""), reflector.last_error
                bad = False
                await wait_for(lambda: reflector.healthy)
                assert set(reflector.store) == {"a"}
                nursery.cancel_scope.cancel()


async def test_list_body_over_the_default_cap_is_refused() -> None:
    """A 20 MiB list answer (no Content-Length: it just keeps coming) stops at 16 MiB."""

    async def huge(request: HttpRequest, stream: trio.SocketStream) -> None:
        await send_head(stream)
        await stream.send_all(b'{"metadata": {}, "items": [' + b" " * (20 << 20) + b"]}")

    peer = HttpPeer(huge)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await peer.start(nursery)
            async with client_for(url) as client:
                reflector = Reflector(client, NODES, backoff=FAST, rng=random.Random(3))
                nursery.start_soon(reflector.run)
                await wait_for(lambda: peer.count() >= 2)
                assert "body exceeds 16777216 bytes" in (reflector.last_error or "")
                nursery.cancel_scope.cancel()


async def test_endless_watch_line_is_refused_at_the_cap() -> None:
    """A watch line with no newline is cut at 4 MiB, not buffered for ever."""

    async def endless(request: HttpRequest, stream: trio.SocketStream) -> None:
        if not request.is_watch:
            await send_body(stream, LIST_OK)
            return
        await send_head(stream)
        await stream.send_all(b'{"type": "ADDED", "object": {"x": "')
        while True:
            await stream.send_all(b"y" * 65536)

    peer = HttpPeer(endless)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await peer.start(nursery)
            async with client_for(url) as client:
                reflector = Reflector(client, NODES, backoff=FAST, rng=random.Random(3))
                nursery.start_soon(reflector.run)
                await wait_for(lambda: peer.count(watch=True) >= 2)
                assert "watch event line exceeds 4194304 bytes" in (reflector.last_error or "")
                nursery.cancel_scope.cancel()


async def test_caps_are_configurable() -> None:
    async def big(request: HttpRequest, stream: trio.SocketStream) -> None:
        await send_body(stream, {"metadata": {"name": "n", "x": "y" * 5000}})

    peer = HttpPeer(big)
    async with trio.open_nursery() as nursery:
        url = await peer.start(nursery)
        async with client_for(url, max_body_bytes=4096) as client:
            with pytest.raises(BodyTooLargeError, match=r"body of 5\d+ bytes exceeds 4096"):
                await client.get(NODES, "n")
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ hypothesis over hostile bodies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["metadata", "items", "spec", "status", "name", "resourceVersion", "continue", "devices",
     "pool", "allocation", "results", "nodeSelector", "type", "object", "kind"]
)  # fmt: skip
hostile_objects = st.recursive(
    json_values,
    lambda inner: st.dictionaries(field_names, inner, max_size=4) | st.lists(inner, max_size=3),
    max_leaves=20,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(list_body=hostile_objects, watch_body=hostile_objects)
async def test_any_hostile_body_leaves_the_reflector_running(
    list_body: Any, watch_body: Any
) -> None:
    served = 0

    async def script(request: HttpRequest, stream: trio.SocketStream) -> None:
        nonlocal served
        served += 1
        if request.is_watch:
            await send_head(stream)
            await stream.send_all(json.dumps(watch_body).encode() + b"\n")
            await trio.sleep(0.05)
            return
        await send_body(stream, list_body)

    peer = HttpPeer(script)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await peer.start(nursery)
            async with client_for(url) as client:
                reflector = Reflector(
                    client,
                    RESOURCE_CLAIMS,
                    backoff=FAST,
                    rng=random.Random(3),
                    keep=partial(allocated_to_node, node="n", driver="dra.cpu", pool="n"),
                )
                nursery.start_soon(reflector.run)
                await wait_for(lambda: served >= 4)
                nursery.cancel_scope.cancel()
