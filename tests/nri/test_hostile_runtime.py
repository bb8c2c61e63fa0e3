"""MuxConnection and NriPlugin against a hostile runtime on a real unix socket.

Issue 8 item 5: refused requests flooded by a runtime that does not read must not pile up reply
tasks (memory grew 52 -> 283 MB over 60,000 of them), and an incomplete frame must time out.
"""

from __future__ import annotations

import logging
import random

import pytest
import trio
import trio.testing

from dracpu.backoff import Backoff
from dracpu.nri import MuxConnection, NriPlugin
from tests.nri.hostile_runtime import (
    MUX,
    accept_one,
    flood_without_reading,
    read_until_eof,
    request_frame,
)
from tests.nri.recording_handler import RecordingHandler


async def nothing(service: str, method: str, payload: bytes) -> bytes:
    return b""


async def connected(
    nursery: trio.Nursery, path: str, **kw: float
) -> tuple[MuxConnection, trio.SocketStream]:
    listener = await nursery.start(accept_one, path)
    ours = await trio.open_unix_socket(path)
    theirs = await listener.accept()
    conn = MuxConnection(ours, nothing, name="plugin", **kw)  # type: ignore[arg-type]
    await nursery.start(conn.run)
    return conn, theirs


async def test_refused_flood_without_reading_is_bounded_then_closed(
    socket_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        conn, runtime = await connected(nursery, socket_path)  # default write timeout
        nursery.start_soon(flood_without_reading, runtime, 60_000)
        peak_tasks = 0
        with trio.fail_after(60):
            while not conn.closed:
                assert conn._nursery is not None
                peak_tasks = max(peak_tasks, len(conn._nursery.child_tasks))
                await trio.sleep(0.01)
            reason = await conn.wait_closed()
        nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(runtime)
    assert "peer stopped reading" in reason
    # One reply task (plus the reader), not one task per refused request.
    assert peak_tasks <= 2


async def test_a_reading_runtime_gets_every_refusal(socket_path: str) -> None:
    """Backpressure, not loss: a peer that reads gets all its answers, in order."""
    async with trio.open_nursery() as nursery:
        conn, runtime = await connected(nursery, socket_path)
        nursery.start_soon(flood_without_reading, runtime, 5_000)
        got = bytearray()
        with trio.fail_after(20):
            while got.count(b"StreamID must be odd") < 5_000:
                got += await runtime.receive_some(1 << 16)
        assert not conn.closed
        nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(runtime)


async def test_partial_frame_times_out(
    socket_path: str, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dracpu.nri")
    async with trio.open_nursery() as nursery:
        conn, runtime = await connected(nursery, socket_path)  # default frame timeout
        frame = request_frame(1)
        await runtime.send_all(frame[:-3])
        with trio.fail_after(60):
            reason = await conn.wait_closed()
        assert trio.current_time() >= 10.0
        nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(runtime)
    assert f"frame incomplete for 10.0 s ({len(frame) - 3} bytes buffered)" in reason
    assert [r.levelname for r in caplog.records if reason in r.getMessage()] == ["WARNING"]


async def test_trickled_frame_times_out_from_its_start(
    socket_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Slowloris: one byte a second keeps the socket busy but the frame never completes."""
    async with trio.open_nursery() as nursery:
        conn, runtime = await connected(nursery, socket_path, frame_timeout=5.0)
        started = trio.current_time()

        async def trickle() -> None:
            for byte in MUX.pack(1, 1000) + b"x" * 1000:
                await runtime.send_all(bytes([byte]))
                await trio.sleep(1.0)

        nursery.start_soon(trickle)
        with trio.fail_after(60):
            reason = await conn.wait_closed()
        assert 5.0 <= trio.current_time() - started < 7.0
        nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(runtime)
    assert "frame incomplete" in reason


async def test_plugin_redials_after_a_runtime_that_stopped_reading(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dracpu.nri")
    plugin = NriPlugin(
        RecordingHandler(),
        socket_path=socket_path,
        backoff=Backoff(initial=0.05, maximum=0.1),
        rng=random.Random(1),
        write_timeout=0.5,
    )
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(accept_one, socket_path)
        nursery.start_soon(plugin.run)
        with trio.fail_after(20):
            first = await listener.accept()
            nursery.start_soon(flood_without_reading, first, 60_000)
            second = await listener.accept()  # the plugin gave up on the first and redialled
        nursery.start_soon(read_until_eof, second)
        nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(first)
    await trio.aclose_forcefully(second)
    lost = [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()]
    assert lost
    assert "peer stopped reading" in lost[0]
