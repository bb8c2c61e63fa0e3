"""MuxConnection and NriPlugin over in-memory streams: ordering, bounds, error paths."""

from __future__ import annotations

import itertools
import logging
import pathlib
import random

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dracpu.errors import InvalidValueError
from dracpu.nri import (
    Backoff,
    ConnectionClosedError,
    MuxConnection,
    NriPlugin,
    RpcStatusError,
    mux,
    ttrpc,
)
from dracpu.nri.ttrpc import Code, MessageType
from generated.google.rpc import Status
from generated.nri.pkg.api import v1alpha1 as api
from generated.ttrpc import Request, Response
from tests.nri.inmemory import PLUGIN, RUNTIME, ChoppyStream, FakeRuntime, memory_pair
from tests.nri.recording_handler import RecordingHandler


async def echo(service: str, method: str, payload: bytes) -> bytes:
    """Answers with method + payload after a payload-dependent pause (so out of order)."""
    await trio.sleep(len(payload) % 7 / 1000)
    return method.encode() + payload


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 9000), max_size=200),
    plugin_calls=st.lists(st.binary(max_size=12000), max_size=6),
    runtime_calls=st.lists(st.binary(max_size=12000), max_size=6),
)
async def test_concurrent_calls_in_both_directions_survive_any_chunking(
    sizes: list[int], plugin_calls: list[bytes], runtime_calls: list[bytes]
) -> None:
    a, b = memory_pair()
    plugin = MuxConnection(ChoppyStream(a, sizes), echo, name="plugin")
    runtime = MuxConnection(
        ChoppyStream(b, sizes[::-1]), echo, name="runtime", serve_conn=2, call_conn=1
    )
    results: dict[tuple[str, int], bytes] = {}

    async def call(conn: MuxConnection, who: str, i: int, payload: bytes) -> None:
        results[who, i] = await conn.call(RUNTIME, f"M{i}", payload, timeout=10)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(plugin.run)
            await nursery.start(runtime.run)
            async with trio.open_nursery() as calls:
                for i, p in enumerate(plugin_calls):
                    calls.start_soon(call, plugin, "plugin", i, p)
                for i, p in enumerate(runtime_calls):
                    calls.start_soon(call, runtime, "runtime", i, p)
            nursery.cancel_scope.cancel()
    expected = {("plugin", i): f"M{i}".encode() + p for i, p in enumerate(plugin_calls)}
    expected |= {("runtime", i): f"M{i}".encode() + p for i, p in enumerate(runtime_calls)}
    assert results == expected


@settings(max_examples=40, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=3000))
async def test_garbage_then_eof_never_hangs(garbage: bytes) -> None:
    a, b = memory_pair()
    conn = MuxConnection(a, echo, name="plugin")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(conn.run)
            await b.send_all(garbage)
            await b.aclose()
            reason = await conn.wait_closed()
    assert reason
    assert conn.closed


async def test_oversized_mux_frame_closes_with_logged_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dracpu.nri")
    a, b = memory_pair()
    conn = MuxConnection(a, echo, name="plugin")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(conn.run)

            async def pending_call() -> None:
                with pytest.raises(ConnectionClosedError, match="protocol error"):
                    await conn.call(RUNTIME, "X", b"")

            nursery.start_soon(pending_call)
            await trio.testing.wait_all_tasks_blocked()
            await b.send_all(mux.HEADER.pack(1, mux.MAX_PAYLOAD + 1))  # no EOF: must not wait
            reason = await conn.wait_closed()
    assert "protocol error" in reason
    assert str(mux.MAX_PAYLOAD + 1) in reason
    assert [r.levelname for r in caplog.records if reason in r.getMessage()] == ["WARNING"]


async def test_oversized_ttrpc_message_closes() -> None:
    a, b = memory_pair()
    conn = MuxConnection(a, echo, name="plugin")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(conn.run)
            header = ttrpc.HEADER.pack(ttrpc.MAX_MESSAGE_LENGTH + 1, 1, 1, 0)
            await b.send_all(mux.HEADER.pack(1, len(header)) + header)
            reason = await conn.wait_closed()
    assert "exceeds" in reason


async def raw_request(b: trio.abc.Stream, stream_id: int, method: str, timeout_ns: int = 0) -> None:
    body = bytes(Request(service=PLUGIN, method=method, timeout_nano=timeout_ns))
    await b.send_all(mux.encode_message(1, ttrpc.encode(stream_id, MessageType.REQUEST, body)))


async def raw_responses(b: trio.abc.Stream, count: int) -> dict[int, list[Response]]:
    """Read ``count`` responses; group them by stream id in arrival order."""
    frames, stream = mux.Decoder(), ttrpc.Decoder()
    out: dict[int, list[Response]] = {}
    seen = 0
    while seen < count:
        for _conn, payload in frames.feed(await b.receive_some(65536)):
            for msg in stream.feed(payload):
                out.setdefault(msg.stream_id, []).append(Response.parse(msg.body))
                seen += 1
    return out


async def test_server_enforces_stream_ids_deadlines_and_errors() -> None:
    async def serve(service: str, method: str, payload: bytes) -> bytes:
        if method == "Fail":
            raise ValueError("boom")
        if method == "Slow":
            await trio.sleep(10)
        if method == "Status":
            raise RpcStatusError(Code.FAILED_PRECONDITION, "nope")
        return b"ok"

    a, b = memory_pair()
    conn = MuxConnection(a, serve, name="plugin")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(conn.run)
            await raw_request(b, 1, "Ok")
            await raw_request(b, 2, "Ok")  # even: client streams are odd
            await raw_request(b, 1, "Ok")  # re-used id
            await raw_request(b, 3, "Fail")
            await raw_request(b, 5, "Slow", timeout_ns=50_000_000)
            await raw_request(b, 7, "Status")
            got = await raw_responses(b, 5)
            await trio.sleep(0.2)  # well past Slow's 50 ms deadline
            assert conn.in_handler() is False
            nursery.cancel_scope.cancel()
    reused, ok = sorted(got[1], key=lambda r: r.payload)
    assert ok.payload == b"ok"
    assert ok.status is None or ok.status.code == 0
    assert reused.status == Status(code=3, message="StreamID cannot be re-used and must increment")
    [even] = got[2]
    assert even.status == Status(
        code=3, message="StreamID must be odd for client initiated streams"
    )
    [fail] = got[3]
    assert fail.status == Status(code=2, message="boom")
    assert fail.payload == b""
    assert 5 not in got  # past its deadline: no answer, the caller's timeout decides
    [status] = got[7]
    assert status.status == Status(code=Code.FAILED_PRECONDITION, message="nope")


async def test_concurrent_request_limit() -> None:
    release = trio.Event()

    async def serve(service: str, method: str, payload: bytes) -> bytes:
        await release.wait()
        return b""

    a, b = memory_pair()
    conn = MuxConnection(a, serve, name="plugin", max_concurrent_requests=2)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(conn.run)
            for sid in (1, 3, 5):
                await raw_request(b, sid, "Block")
            refused = await raw_responses(b, 1)
            release.set()
            rest = await raw_responses(b, 2)
            nursery.cancel_scope.cancel()
    [[refusal]] = refused.values()
    assert 5 in refused
    assert refusal.status is not None
    assert refusal.status.code == Code.RESOURCE_EXHAUSTED
    assert sorted(rest) == [1, 3]


# ---------------------------------------------------------------------------- NriPlugin


async def plugin_with_fake_runtime(
    nursery: trio.Nursery, handler: RecordingHandler, **kwargs: object
) -> tuple[NriPlugin, FakeRuntime]:
    a, b = memory_pair()
    runtime = FakeRuntime(b)
    dialled = False

    async def dial() -> trio.abc.Stream:
        nonlocal dialled
        if dialled:
            await trio.sleep_forever()
        dialled = True
        return a

    plugin = NriPlugin(handler, dial=dial, **kwargs)  # type: ignore[arg-type]
    await nursery.start(runtime.conn.run)
    nursery.start_soon(plugin.run)
    await runtime.registered.wait()
    return plugin, runtime


async def test_event_mask_is_clamped_to_the_runtime_nri_version() -> None:
    events = {api.Event.CREATE_CONTAINER, api.Event.UPDATE_POD_SANDBOX}
    for nri_version, expected in [("", 0x8), ("v0.9.1", 0x8), ("v0.12.0", 0x808)]:
        handler = RecordingHandler()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                _, runtime = await plugin_with_fake_runtime(nursery, handler, events=events)
                rsp = await runtime.configure(NRI_version=nri_version)
                nursery.cancel_scope.cancel()
        assert rsp.events == expected, nri_version
        assert runtime.register_requests[0].plugin_name == "dra.cpu"
        assert runtime.register_requests[0].plugin_idx == "90"


async def test_configure_defaults_timeouts_for_old_runtimes() -> None:
    handler = RecordingHandler()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            _, runtime = await plugin_with_fake_runtime(nursery, handler)
            await runtime.configure()
            await runtime.configure(registration_timeout=7000, request_timeout=1500)
            nursery.cancel_scope.cancel()
    assert [(c.registration_timeout, c.request_timeout) for c in handler.configured] == [
        (5.0, 2.0),
        (7.0, 1.5),
    ]


async def test_unknown_methods_and_services_are_unimplemented() -> None:
    handler = RecordingHandler()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            _, runtime = await plugin_with_fake_runtime(nursery, handler)
            with pytest.raises(RpcStatusError) as method:
                await runtime.conn.call(PLUGIN, "FutureEvent", b"")
            with pytest.raises(RpcStatusError) as service:
                await runtime.conn.call("x.Y", "Configure", b"")
            with pytest.raises(RpcStatusError) as validate:
                await runtime.conn.call(PLUGIN, "ValidateContainerAdjustment", b"")
            with pytest.raises(RpcStatusError) as garbage:
                await runtime.conn.call(PLUGIN, "CreateContainer", b"\x08\x01")
            nursery.cancel_scope.cancel()
    assert (method.value.code, method.value.status_message) == (12, "method FutureEvent")
    assert (service.value.code, service.value.status_message) == (12, "service x.Y")
    assert validate.value.code == 12
    assert garbage.value.code == Code.INVALID_ARGUMENT


async def test_chunked_synchronize_accumulates_until_the_last_chunk() -> None:
    handler = RecordingHandler(shared_cpus="9")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            plugin, runtime = await plugin_with_fake_runtime(nursery, handler)
            await runtime.configure()
            chunks = [[api.Container(id=f"c{i}{j}") for j in range(3)] for i in range(3)]
            first = await runtime.synchronize(chunks[0], more=True)
            second = await runtime.synchronize(chunks[1], more=True)
            assert not plugin.connected
            last = await runtime.synchronize(chunks[2])
            assert plugin.connected
            nursery.cancel_scope.cancel()
    assert (first.more, first.update, second.more, second.update) == (True, [], True, [])
    assert last.more is False
    assert [u.container_id for u in last.update] == [f"c{i}{j}" for i in range(3) for j in range(3)]
    assert handler.syncs == [(0, 9)]


async def test_update_containers_errors() -> None:
    handler = RecordingHandler()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            plugin, runtime = await plugin_with_fake_runtime(nursery, handler)
            with pytest.raises(ConnectionClosedError):
                await plugin.update_containers([])  # not synchronized yet
            await runtime.configure()
            await runtime.synchronize([])
            runtime.fail_updates = True
            with pytest.raises(RpcStatusError, match="some containers failed"):
                await plugin.update_containers([api.ContainerUpdate(container_id="x")])
            nursery.cancel_scope.cancel()
    assert [u.update[0].container_id for u in runtime.updates] == ["x"]


async def test_redial_uses_bounded_jittered_backoff(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[float] = []

    async def dial() -> trio.abc.Stream:
        attempts.append(trio.current_time())
        raise FileNotFoundError("no socket")

    backoff = Backoff(initial=0.1, maximum=1.0, jitter=0.5)
    plugin = NriPlugin(RecordingHandler(), dial=dial, backoff=backoff, rng=random.Random(7))
    with trio.move_on_after(30):
        await plugin.run()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) > 20
    assert all(0.05 <= g <= 1.0 + 1e-9 for g in gaps)
    assert gaps[0] <= 0.15 + 1e-9
    assert max(gaps) > 0.5


async def test_a_socket_appearing_cuts_the_redial_delay_short(tmp_path: pathlib.Path) -> None:
    """A runtime that comes back (or turns NRI on) is dialled within ``socket_poll``, not after
    the rest of a long backoff delay; a real unix socket, real clock."""
    path = tmp_path / "nri.sock"
    plugin = NriPlugin(
        RecordingHandler(),
        socket_path=str(path),
        backoff=Backoff(initial=60.0, maximum=60.0, jitter=0.0),
        socket_poll=0.05,
    )
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    with sock, trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(plugin.run)
            await trio.sleep(0.3)  # the first dial has failed: the next is 60 s away
            await sock.bind(str(path))
            sock.listen(1)
            listening = trio.current_time()
            conn, _ = await sock.accept()
            with conn:
                assert trio.current_time() - listening < 1.0
            nursery.cancel_scope.cancel()


def test_plugin_identity_is_validated() -> None:
    with pytest.raises(InvalidValueError, match="name"):
        NriPlugin(RecordingHandler(), name="dra cpu")
    with pytest.raises(InvalidValueError, match="index"):
        NriPlugin(RecordingHandler(), index="5")
    with pytest.raises(InvalidValueError, match="events"):
        NriPlugin(RecordingHandler(), events={api.Event.VALIDATE_CONTAINER_ADJUSTMENT})


async def test_a_new_socket_refusing_before_it_listens_is_dialled_again_soon(
    tmp_path: pathlib.Path,
) -> None:
    """The runtime's bind-then-listen window: the plugin's dial is refused by a socket that is
    not listening yet, and is tried again within ``socket_poll`` once, not after 60 s."""
    path = tmp_path / "nri.sock"
    plugin = NriPlugin(
        RecordingHandler(),
        socket_path=str(path),
        backoff=Backoff(initial=60.0, maximum=60.0, jitter=0.0),
        socket_poll=0.05,
    )
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    with sock, trio.fail_after(10):
        await sock.bind(str(path))  # bound, not listening: connect() is refused
        async with trio.open_nursery() as nursery:
            nursery.start_soon(plugin.run)
            await trio.sleep(0.02)  # the first dial is refused
            sock.listen(1)
            listening = trio.current_time()
            conn, _ = await sock.accept()
            with conn:
                assert trio.current_time() - listening < 1.0
            nursery.cancel_scope.cancel()
