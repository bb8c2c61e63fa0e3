"""The read-loop fast path of MuxConnection over real unix sockets: requests answered by
``serve_now`` without a task, direct descriptor reads and writes, frames finished by a task when
the socket buffer is full, order kept while a request is in flight, no starvation by a peer
that never pauses."""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios

import pytest
import trio
import trio.testing

from dracpu.nri import MuxConnection, RpcStatusError, mux
from dracpu.nri.connection import MAX_READS_WITHOUT_CHECKPOINT, READ_SIZE
from dracpu.nri.ttrpc import Code
from tests.nri.inmemory import PLUGIN

BIG = 3 << 20  # well over a unix socket's send buffer, under ttrpc's 4 MiB


def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), trio.SocketStream(
        trio.socket.from_stdlib_socket(b)
    )


class Served:
    """``serve_now`` answers "Now" and "Big" and refuses "Bad"; everything else, and every
    request while ``hold`` is set, goes to ``serve`` (which waits for ``release`` on "Hold")."""

    def __init__(self) -> None:
        self.now: list[str] = []
        self.later: list[str] = []
        self.release = trio.Event()

    def serve_now(self, service: str, method: str, payload: bytes) -> bytes | None:
        if method == "Bad":
            raise RpcStatusError(Code.FAILED_PRECONDITION, "refused at once")
        if method not in ("Now", "Big"):
            return None
        self.now.append(method)
        return b"x" * BIG if method == "Big" else b"now:" + payload

    async def serve(self, service: str, method: str, payload: bytes) -> bytes:
        self.later.append(method)
        if method == "Hold":
            await self.release.wait()
        return b"later:" + payload


async def test_answers_now_falls_back_and_refuses_over_a_socket() -> None:
    served = Served()
    a, b = socket_pair()
    plugin = MuxConnection(a, served.serve, name="plugin", serve_now=served.serve_now)
    runtime = MuxConnection(b, served.serve, name="runtime", serve_conn=2, call_conn=1)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(plugin.run)
            await nursery.start(runtime.run)
            assert await runtime.call(PLUGIN, "Now", b"1") == b"now:1"
            assert await runtime.call(PLUGIN, "Other", b"2") == b"later:2"
            with pytest.raises(RpcStatusError) as err:
                await runtime.call(PLUGIN, "Bad", b"")
            nursery.cancel_scope.cancel()
    assert err.value.code == Code.FAILED_PRECONDITION
    assert err.value.status_message == "refused at once"
    assert served.now == ["Now"]
    assert served.later == ["Other"]


async def test_nothing_is_answered_now_while_a_request_is_in_flight() -> None:
    """The read loop must not overtake a request still being served in its task."""
    served = Served()
    a, b = socket_pair()
    plugin = MuxConnection(a, served.serve, name="plugin", serve_now=served.serve_now)
    runtime = MuxConnection(b, served.serve, name="runtime", serve_conn=2, call_conn=1)
    answers: dict[str, bytes] = {}

    async def call(method: str) -> None:
        answers[method] = await runtime.call(PLUGIN, method, b"")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(plugin.run)
            await nursery.start(runtime.run)
            nursery.start_soon(call, "Hold")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "Now")
            await trio.testing.wait_all_tasks_blocked()
            assert served.later == ["Hold", "Now"]  # queued behind Hold, not answered now
            served.release.set()
            await trio.testing.wait_all_tasks_blocked()
            assert await runtime.call(PLUGIN, "Now", b"") == b"now:"  # idle again: now
            nursery.cancel_scope.cancel()
    assert answers == {"Hold": b"later:", "Now": b"later:"}
    assert served.now == ["Now"]


async def test_frames_bigger_than_the_socket_buffer_arrive_whole_beside_calls() -> None:
    """A read-loop answer the kernel takes only in part is finished by a task holding the
    write lock: the plugin's own calls on conn 2 never cut into it."""
    served = Served()
    a, b = socket_pair()
    assert a.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < BIG
    plugin = MuxConnection(a, served.serve, name="plugin", serve_now=served.serve_now)
    runtime = MuxConnection(b, served.serve, name="runtime", serve_conn=2, call_conn=1)
    big: list[bytes] = []
    back: list[bytes] = []

    async def big_call() -> None:
        big.append(await runtime.call(PLUGIN, "Big", b""))

    async def plugin_call(i: int) -> None:
        back.append(await plugin.call(PLUGIN, "Other", b"%d" % i))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(plugin.run)
            await nursery.start(runtime.run)
            async with trio.open_nursery() as calls:
                for _ in range(3):
                    calls.start_soon(big_call)
                for i in range(20):
                    calls.start_soon(plugin_call, i)
            nursery.cancel_scope.cancel()
    assert big == [b"x" * BIG] * 3
    assert sorted(back) == sorted(b"later:%d" % i for i in range(20))


async def test_a_backlog_of_reads_does_not_starve_other_tasks() -> None:
    """With megabytes already waiting (frames for an unopened conn), every read finds data at
    once; the read loop still yields every few reads, so other tasks run before it is drained,
    and closing the connection takes effect."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    theirs.setblocking(False)
    frame = mux.HEADER.pack(7, 60000) + bytes(60000)
    backlog = 0
    with contextlib.suppress(BlockingIOError):
        while backlog < 4 << 20:
            backlog += theirs.send(frame)
    if backlog < 2 * (MAX_READS_WITHOUT_CHECKPOINT + 1) * READ_SIZE:
        ours.close()
        theirs.close()
        pytest.skip(f"the kernel queues only {backlog} bytes (net.core.wmem_max too small)")
    conn = MuxConnection(
        trio.SocketStream(trio.socket.from_stdlib_socket(ours)), Served().serve, name="plugin"
    )
    unread: list[int] = []  # bytes still waiting, seen by another task while the loop reads
    drained = trio.Event()

    async def watch() -> None:
        while True:
            await trio.lowlevel.checkpoint()
            unread.append(_waiting(ours))
            if not unread[-1]:
                drained.set()
                return

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                await nursery.start(conn.run)
                await drained.wait()
                conn.close("test over")
                assert await conn.wait_closed() == "test over"
                nursery.cancel_scope.cancel()
    finally:
        theirs.close()
    assert any(0 < n < backlog for n in unread), unread[:10]


def _waiting(sock: socket.socket) -> int:
    """Bytes received on ``sock`` and not yet read (FIONREAD)."""
    if sock.fileno() < 0:
        return 0
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
