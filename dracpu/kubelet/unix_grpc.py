"""Host a grpclib server on a unix socket inside trio (through trio-asyncio).

grpclib is an asyncio library; dracpu is a trio program. :func:`serve_unix_grpc` bridges the two:
the grpclib server runs on the trio-asyncio loop of the calling trio task, and its lifetime is the
lifetime of an ``async with`` block in trio.

Two things grpclib does not do on its own are handled here:

* Stale socket files (from a crashed earlier instance) are removed before listening, and our own
  socket file is removed when we stop, but only if it is still ours (same inode), so a newer
  instance that already replaced it keeps its socket.
* The socket file is mode 0600 (root, i.e. the kubelet, alone may connect) and a socket
  directory we create is 0700.
* ``grpclib.server.Server.close()`` stops listening and cancels running handlers but leaves the
  accepted HTTP/2 connections open, so a client would wait forever on an idle connection. This
  module tracks every accepted connection and aborts it when the block exits, so clients see the
  connection drop (gRPC ``UNAVAILABLE``) instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpclib.server
import trio
from grpclib.protocol import EventsProcessor, H2Protocol
from h2.settings import SettingCodes
from h2.utilities import SizeLimitDict

from dracpu.backoff import Backoff
from dracpu.errors import InvalidValueError
from dracpu.kubelet.aio_bridge import current_loop, run_asyncio
from dracpu.kubelet.codec import DEFAULT_MAX_RECEIVE_MESSAGE_BYTES, StrictProtoCodec
from dracpu.kubelet.errors import KubeletSocketError
from dracpu.kubelet.ratelog import RateLimitedLog

_log = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107

# How long stopping waits for cancelled handlers to finish before giving up on them.
_STOP_GRACE_SECONDS = 5.0


class _CoalescingTransport:
    """Transport proxy that merges the writes of one event-loop iteration into one send.

    grpclib writes a unary response as three separate writes (headers, message, trailers); on a
    busy node each write is a syscall that also wakes the peer. Merging them saves CPU and peer
    wake-ups and does not delay anything: the merged write goes out before the loop next waits
    for I/O.
    """

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))
        self._size += len(data)

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._size + self._transport.get_write_buffer_size()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._size = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # is_closing, get_extra_info, set_write_buffer_limits, can_write_eof, ...
        return getattr(self._transport, name)


@dataclass(frozen=True, slots=True)
class GrpcLimits:
    """Per-socket bounds on what one peer may make the server hold.

    ``max_receive_message_bytes``: a request whose length prefix says more is refused with
    ``RESOURCE_EXHAUSTED`` as soon as the prefix arrives, before its body is buffered (4 MiB, as
    grpc-go). ``max_concurrent_streams``: advertised in SETTINGS_MAX_CONCURRENT_STREAMS; a peer
    that opens more anyway loses the connection (h2 enforces it). ``max_connections``: at the cap
    a new connection evicts the one idle longest, or is closed at once if none is idle.
    ``idle_timeout``: a connection with no open stream for this long is closed with GOAWAY (the
    kubelet reconnects on its next call). ``max_depth``: protobuf nesting accepted.
    """

    max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_MESSAGE_BYTES
    max_concurrent_streams: int = 100
    max_connections: int = 64
    idle_timeout: float = 300.0

    def __post_init__(self) -> None:
        if (
            self.max_receive_message_bytes < 1
            or self.max_concurrent_streams < 1
            or self.max_connections < 1
            or not self.idle_timeout > 0
        ):
            raise InvalidValueError("every gRPC limit must be positive", value=self)


_faults = RateLimitedLog(_log)


def _loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The asyncio loop's exception handler while a server runs: one log line, never raise.

    trio-asyncio's default handler re-raises into the loop's nursery, which would end every
    server on the loop for an error that concerns one connection (a protocol callback that
    failed, ``socket.accept() out of system resource``, ...). asyncio has already closed the
    transport the error was about.
    """
    message = str(context.get("message") or "unhandled error in event loop")
    exc = context.get("exception")
    detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    _faults.warning(message, "asyncio: %s%s", message, detail)


@contextlib.contextmanager
def _exception_policy(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    previous = loop.get_exception_handler()
    loop.set_exception_handler(_loop_exception_handler)
    try:
        yield
    finally:
        loop.set_exception_handler(previous)


class _MessageFramer:
    """Follows the gRPC length prefixes (``flag u8 | length u32``) of one request stream."""

    __slots__ = ("header", "refused", "remaining")

    def __init__(self) -> None:
        self.header = bytearray()
        self.remaining = 0
        self.refused = False

    def oversized(self, data: bytes, limit: int) -> int | None:
        """Consume ``data``; the declared length of the first message over ``limit``, if any."""
        pos, end = 0, len(data)
        while pos < end:
            if self.remaining:
                step = min(self.remaining, end - pos)
                self.remaining -= step
                pos += step
                continue
            take = min(5 - len(self.header), end - pos)
            self.header += data[pos : pos + take]
            pos += take
            if len(self.header) == 5:
                length = int.from_bytes(self.header[1:5], "big")
                self.header.clear()
                if length > limit:
                    return length
                self.remaining = length
        return None


# RFC 9113 §6.5.2: SETTINGS_MAX_FRAME_SIZE starts at 16384 and h2 (as grpclib uses it) never
# raises it for what it receives.
_MAX_INBOUND_FRAME = 16384


class _FrameLengthGuard:
    """Follows HTTP/2 frame headers on the inbound byte stream (after the 24-byte preface).

    h2 checks a frame's length only once the whole frame is buffered, so one frame header
    claiming 16 MiB made it hold up to 16 MiB per connection; this refuses such a header as
    soon as its 9 bytes arrive.
    """

    __slots__ = ("header", "skip")

    def __init__(self) -> None:
        self.skip = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.header = bytearray()

    def oversized(self, data: bytes) -> int | None:
        """Consume ``data``; the length of the first frame over the limit, if any."""
        pos, end = 0, len(data)
        while pos < end:
            if self.skip:
                step = min(self.skip, end - pos)
                self.skip -= step
                pos += step
                continue
            take = min(9 - len(self.header), end - pos)
            self.header += data[pos : pos + take]
            pos += take
            if len(self.header) == 9:
                length = int.from_bytes(self.header[:3], "big")
                self.header.clear()
                if length > _MAX_INBOUND_FRAME:
                    return length
                self.skip = length
        return None


class _GuardedProcessor(EventsProcessor):
    """grpclib's HTTP/2 event processor, hardened.

    * Events grpclib has no processor for (``UnknownFrameReceived`` for extension frame types,
      ``AlternativeServiceAvailable``, ...) are ignored, as RFC 9113 §4.1/§5.5 requires;
      grpclib raises ``NotImplementedError`` for them.
    * A request message whose length prefix exceeds the limit is refused right away
      (``RESOURCE_EXHAUSTED``, then RST_STREAM NO_ERROR, as grpc-go does); its data is
      acknowledged and dropped instead of buffered.
    * Releasing a stream is idempotent, so a handler task cancelled before it ever ran (which
      then never reaches grpclib's ``finally: release_stream()``) can be released afterwards.
    """

    def __init__(self, handler: _Handler, connection: Any, limits: GrpcLimits) -> None:
        super().__init__(handler, connection)
        self._handler = handler
        self._limit = limits.max_receive_message_bytes
        self._framers: dict[int, _MessageFramer] = {}
        self._refusals: set[asyncio.Task[None]] = set()

    def process(self, event: Any) -> None:
        processors = getattr(self, "processors", None)
        if processors is None:  # the connection was closed
            return
        proc = processors.get(type(event))
        if proc is None:
            _log.debug("ignoring HTTP/2 event %s", type(event).__name__)
            return
        proc(event)

    def register(self, stream: Any) -> Callable[[], None]:
        release = super().register(stream)
        streams = self.streams

        def release_once() -> None:
            self._framers.pop(stream.id, None)
            if stream.id in streams:
                release()

        return release_once

    def process_data_received(self, event: Any) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            framer = self._framers.get(event.stream_id)
            if framer is None:
                framer = self._framers[event.stream_id] = _MessageFramer()
            declared = None if framer.refused else framer.oversized(event.data, self._limit)
            if framer.refused or declared is not None:
                self.connection.ack(event.stream_id, event.flow_controlled_length)
                if declared is not None:
                    framer.refused = True
                    self._refuse(stream, declared)
                return
        super().process_data_received(event)

    def _refuse(self, stream: Any, declared: int) -> None:
        _faults.warning(
            "oversized", "refused a %d-byte request message (limit %d)", declared, self._limit
        )
        self._handler.cancel_stream(stream)
        message = f"received message larger than max ({declared} vs. {self._limit})"
        task = asyncio.get_running_loop().create_task(_send_status(stream, 8, message))
        self._refusals.add(task)
        task.add_done_callback(self._refusals.discard)


async def _send_status(stream: Any, status: int, message: str) -> None:
    """Answer ``stream`` with a trailers-only gRPC status, then reset it if the peer is still
    sending. Cancellation: the answer may or may not have gone out."""
    try:
        await stream.send_headers(
            [
                (":status", "200"),
                ("content-type", "application/grpc+proto"),
                ("grpc-status", str(status)),
                ("grpc-message", message),
            ],
            end_stream=True,
        )
        if stream.closable:
            stream.reset_nowait()
    except Exception as exc:  # the peer went away meanwhile
        _log.debug("could not send gRPC status %d: %s", status, exc)


class _Handler(grpclib.server.Handler):
    """grpclib's per-connection request handler, freeing each stream when its task ends.

    grpclib keeps every finished handler task (and through its frames the stream and its
    receive buffer, up to the 4 MiB window) in ``_tasks``/``_cancelled`` until a lazy cleanup
    that runs only when later requests or connections arrive, so abandoned requests pinned
    their buffers indefinitely. Here a task leaves both at once when it is done, and its stream
    is released even if the task was cancelled before it started.
    """

    def __init__(self, *args: Any, running: set[asyncio.Task[None]]) -> None:
        super().__init__(*args)
        self._running = running

    def accept(self, stream: Any, headers: Any, release_stream: Callable[[], None]) -> None:
        super().accept(stream, headers, release_stream)
        task = self._tasks[stream]
        self._running.add(task)
        task.add_done_callback(functools.partial(self._finished, stream, release_stream))

    def _finished(
        self, stream: Any, release_stream: Callable[[], None], task: asyncio.Task[None]
    ) -> None:
        if self._tasks.get(stream) is task:
            del self._tasks[stream]
        self._cancelled.discard(task)
        self._running.discard(task)
        release_stream()
        if not task.cancelled() and task.exception() is not None:
            _log.debug("gRPC handler task failed: %r", task.exception())

    def cancel(self, stream: Any) -> None:
        self.cancel_stream(stream)

    def cancel_stream(self, stream: Any) -> None:
        """Cancel the handler task of ``stream`` if it is still running."""
        task = self._tasks.pop(stream, None)
        if task is not None:
            task.cancel()
            self._cancelled.add(task)


CLOSED_STREAMS_KEPT = 1024
"""How many closed streams a connection remembers (h2 keeps 65,536 by default).

h2 remembers how each closed stream ended, so a frame still in flight after a reset is not
mistaken for a protocol error. The kubelet keeps one connection to the plugin for the node's
life and opens a stream per call (two per pod), so the default table grew by about 165 bytes a
call up to some 10 MiB per connection: the RSS creep the churn bench showed. A late frame
arrives within moments of the close, well inside the last 1,024 streams (the server allows 100
at once)."""


def _forget_old_closed_streams(h2_connection: Any) -> None:
    """Bound h2's table of closed streams to :data:`CLOSED_STREAMS_KEPT` entries.

    h2 4.x (``h2.utilities.SizeLimitDict``, sized from ``MAX_CLOSED_STREAMS`` when the connection
    is made) has no public setter; ``tests/kubelet/test_hardening.py`` fails if that changes.
    """
    table = getattr(h2_connection, "_closed_streams", None)
    if isinstance(table, SizeLimitDict):
        h2_connection._closed_streams = SizeLimitDict(table, size_limit=CLOSED_STREAMS_KEPT)
    else:
        _log.warning("h2 has no closed-stream table to bound (%s); memory may creep", type(table))


class _GuardedProtocol(H2Protocol):
    """grpclib's HTTP/2 protocol with :class:`_GuardedProcessor` and our stream limit."""

    def __init__(self, handler: _Handler, config: Any, h2_config: Any, limits: GrpcLimits) -> None:
        super().__init__(handler, config, h2_config)
        self._handler = handler
        self._limits = limits

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.processor = _GuardedProcessor(self._handler, self.connection, self._limits)
        # grpclib 0.4.9 (pinned) keeps the h2 connection here; h2's initial SETTINGS said 100.
        h2_connection = self.connection._connection
        h2_connection.update_settings(
            {SettingCodes.MAX_CONCURRENT_STREAMS: self._limits.max_concurrent_streams}
        )
        _forget_old_closed_streams(h2_connection)
        self.connection.flush()

    def open_streams(self) -> int:
        """Requests of this connection that are not finished."""
        return len(self.processor.streams) if hasattr(self, "processor") else 0

    def close_gracefully(self) -> None:
        """Send GOAWAY and close (clients retry elsewhere or reconnect)."""
        try:
            self.connection._connection.close_connection()
            self.connection.flush()
        except Exception as exc:  # state machine already closed; just close the socket
            _log.debug("no GOAWAY sent: %s", exc)
        self.connection.close()


class _TrackedProtocol(asyncio.Protocol):
    """One accepted connection: wraps grpclib's protocol so that nothing that goes wrong on this
    connection escapes it (a failure closes the connection with one log line), remembers the
    transport for abort on stop, and tracks how long the connection has been idle."""

    def __init__(self, inner: _GuardedProtocol, live: dict[_TrackedProtocol, None]) -> None:
        self._inner = inner
        self._live = live
        self.transport: asyncio.BaseTransport | None = None
        self.idle_since: float | None = None
        self._frames = _FrameLengthGuard()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._live[self] = None
        self.idle_since = time.monotonic()
        proxy: Any = (
            _CoalescingTransport(transport, asyncio.get_running_loop())
            if isinstance(transport, asyncio.WriteTransport)
            else transport
        )
        self._guard("connection_made", self._inner.connection_made, proxy)

    def data_received(self, data: bytes) -> None:
        length = self._frames.oversized(data)
        if length is not None:
            _faults.warning(
                "frame-size", "closing a gRPC connection: a %d-byte HTTP/2 frame", length
            )
            self.abort()
            return
        self._guard("data_received", self._inner.data_received, data)

    def eof_received(self) -> bool | None:
        return None  # close the transport: HTTP/2 has no half-close

    def pause_writing(self) -> None:
        self._guard("pause_writing", self._inner.pause_writing)

    def resume_writing(self) -> None:
        self._guard("resume_writing", self._inner.resume_writing)

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.pop(self, None)
        try:
            self._inner.connection_lost(exc)
        except Exception as err:
            _faults.warning("connection_lost", "error while closing a gRPC connection: %r", err)

    def _guard(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            _faults.warning(
                f"{what}:{type(exc).__name__}",
                "closing a gRPC connection: %s failed: %s: %s",
                what,
                type(exc).__name__,
                exc,
            )
            self.abort()

    def idle_for(self, now: float) -> float:
        """Seconds without an open request (0 while one is open)."""
        if self._inner.open_streams():
            self.idle_since = None
            return 0.0
        if self.idle_since is None:
            self.idle_since = now
        return now - self.idle_since

    def close_idle(self) -> None:
        self._guard("close", self._inner.close_gracefully)
        self.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            # abort(), not close(): do not wait to flush; the peer sees the connection end now.
            transport: Any = self.transport
            transport.abort()


# Accept errors that mean "out of something for now": pause accepting, with backoff.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Accept errors about one connection that is already gone.
_TRANSIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN})
_ACCEPT_BACKOFF = Backoff(initial=0.05, maximum=5.0)


class _ClosingServer(grpclib.server.Server):
    """A grpclib ``Server`` whose connections we accept, guard, bound and can drop.

    grpclib's own ``start``/``close`` are not used: a trio task accepts (pausing with backoff
    when file descriptors run out, instead of asyncio's path through the loop's exception
    handler) and hands each socket to the asyncio loop.
    """

    def __init__(self, handlers: Collection[Any], limits: GrpcLimits) -> None:
        super().__init__(handlers, codec=StrictProtoCodec(limits.max_receive_message_bytes))
        self._limits = limits
        self._live: dict[_TrackedProtocol, None] = {}
        self._running: set[asyncio.Task[None]] = set()

    def _protocol_factory(self) -> Any:
        handler = _Handler(
            self._mapping,
            self._codec,
            self._status_details_codec,
            self.__dispatch__,
            running=self._running,
        )
        inner = _GuardedProtocol(handler, self._config, self._h2_config, self._limits)
        return _TrackedProtocol(inner, self._live)

    @property
    def connections(self) -> int:
        """Connections currently open."""
        return len(self._live)

    async def accept_forever(self, listener: socket.socket, path: Path) -> NoReturn:
        """Accept connections on ``listener`` until cancelled; never exits on an accept error.

        Cancellation: stops accepting and closes the listening socket; accepted connections are
        left to :meth:`abort_connections`.
        """
        loop = current_loop()
        retry = _ACCEPT_BACKOFF.counter()
        with trio.socket.from_stdlib_socket(listener) as tsock:
            while True:
                try:
                    conn, _ = await tsock.accept()
                except OSError as exc:
                    if exc.errno in _TRANSIENT_ERRNOS:
                        continue
                    delay = retry.next_delay()
                    _faults.warning(
                        f"accept:{exc.errno}",
                        "cannot accept on %s (%s); pausing accepts for %.2f s",
                        path,
                        exc.strerror or exc,
                        delay,
                    )
                    await trio.sleep(delay)
                    continue
                if retry.attempt:
                    _log.info("accepting on %s again", path)
                    retry.reset()
                await self._adopt(loop, socket.socket(fileno=conn.detach()), path)

    async def _adopt(
        self, loop: asyncio.AbstractEventLoop, conn: socket.socket, path: Path
    ) -> None:
        if len(self._live) >= self._limits.max_connections and not self._evict_idle():
            _faults.warning(
                f"full:{path}",
                "refused a connection on %s: %d connections, none idle",
                path,
                len(self._live),
            )
            conn.close()
            return
        conn.setblocking(False)
        try:
            await run_asyncio(loop.connect_accepted_socket, self._protocol_factory, conn)
        except (OSError, RuntimeError) as exc:
            _faults.warning(f"adopt:{path}", "dropped a new connection on %s: %s", path, exc)
            conn.close()

    def _evict_idle(self) -> bool:
        now = time.monotonic()
        idle = [(proto.idle_for(now), i, proto) for i, proto in enumerate(self._live)]
        idle = [entry for entry in idle if entry[2].idle_since is not None]
        if not idle:
            return False
        _, _, oldest = max(idle, key=lambda entry: (entry[0], -entry[1]))
        _faults.warning("evict", "at %d connections: closing the one idle longest", len(idle))
        oldest.close_idle()
        self._live.pop(oldest, None)
        return True

    async def close_idle_forever(self) -> NoReturn:
        """Close connections idle longer than the limit, checking a few times per timeout.

        Cancellation: stops checking; nothing to undo.
        """
        timeout = self._limits.idle_timeout
        period = min(max(timeout / 4, 0.05), 10.0)
        while True:
            await trio.sleep(period)
            now = time.monotonic()
            for proto in list(self._live):
                if proto.idle_for(now) >= timeout:
                    _log.debug("closing a gRPC connection idle for %.1f s", timeout)
                    proto.close_idle()

    def abort_connections(self) -> int:
        """Abort every accepted connection and cancel every request; returns how many
        connections there were."""
        live = list(self._live)
        for proto in live:
            proto.abort()
        for task in list(self._running):
            task.cancel()
        return len(live)

    async def wait_handlers(self) -> None:
        """(asyncio) Wait until every cancelled request handler has finished."""
        if self._running:
            await asyncio.wait(set(self._running))


@dataclass(frozen=True, slots=True)
class ServingSocket:
    """A unix socket that is listening: its path and what identifies our file there.

    Inode numbers are reused quickly on tmpfs, so the change time is part of the identity.
    """

    path: Path
    device: int
    inode: int
    ctime_ns: int


def remove_stale_socket(path: Path) -> bool:
    """Remove a leftover socket file at ``path``; returns whether one was removed.

    A non-socket file at that path is never removed: that raises :class:`KubeletSocketError`,
    because deleting an unexpected file on the host is worse than failing to start.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise KubeletSocketError(
            f"cannot inspect socket path ({exc.strerror})", path=str(path)
        ) from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise KubeletSocketError("refusing to replace a non-socket file", path=str(path))
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise KubeletSocketError(
            f"cannot remove stale socket ({exc.strerror})", path=str(path)
        ) from exc
    _log.info("removed stale socket %s", path)
    return True


def _listen(path: Path) -> tuple[socket.socket, ServingSocket]:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise KubeletSocketError(
            f"socket path longer than {MAX_SOCKET_PATH_BYTES} bytes", path=str(path)
        )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KubeletSocketError(
            f"cannot create socket directory ({exc.strerror})", path=str(path)
        ) from exc
    remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        # Only root (the kubelet) may connect; set before listen, so no one connects earlier.
        os.chmod(path, 0o600)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        st = path.lstat()
    except OSError as exc:
        sock.close()
        raise KubeletSocketError(f"cannot listen ({exc.strerror})", path=str(path)) from exc
    return sock, ServingSocket(
        path=path, device=st.st_dev, inode=st.st_ino, ctime_ns=st.st_ctime_ns
    )


def remove_own_socket(serving: ServingSocket) -> bool:
    """Remove ``serving.path`` if it is still the file we created; returns whether it was."""
    try:
        st = serving.path.lstat()
    except FileNotFoundError:
        return False
    if (st.st_dev, st.st_ino, st.st_ctime_ns) != (
        serving.device,
        serving.inode,
        serving.ctime_ns,
    ):
        _log.info("socket %s was replaced by another instance; leaving it", serving.path)
        return False
    try:
        serving.path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        _log.warning("cannot remove socket %s: %s", serving.path, exc)
        return False
    return True


@contextlib.asynccontextmanager
async def serve_unix_grpc(
    path: Path, services: Collection[Any], limits: GrpcLimits | None = None
) -> AsyncIterator[ServingSocket]:
    """Serve the grpclib ``services`` on the unix socket ``path`` for the duration of the block.

    Must run inside ``trio_asyncio.open_loop()``. On entry a stale socket file at ``path`` is
    removed and the socket is listening when the block body starts. ``limits`` bounds what peers
    may make the server hold (:class:`GrpcLimits`; defaults if omitted). While the block runs the
    loop's exception handler logs instead of raising, and no error on one connection ends the
    server: that connection is closed with one log line. On exit (normal, error or
    cancellation) the listener is closed, every accepted connection is aborted, running handlers
    are cancelled (waiting at most a few seconds for them), the loop's previous exception
    handler is restored, and the socket file is removed if it is still ours.

    Cancellation: cancelling the enclosing trio scope ends the block as above; clients with calls
    in flight or idle connections see the connection close (``UNAVAILABLE``), never a hang. The
    shutdown steps run shielded so they complete even though the scope is cancelled.
    """
    limits = limits if limits is not None else GrpcLimits()
    sock, serving = _listen(path)
    try:

        async def _create() -> _ClosingServer:
            return _ClosingServer(services, limits)

        server = await run_asyncio(_create)
        with _exception_policy(current_loop()):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.accept_forever, sock, path)
                nursery.start_soon(server.close_idle_forever)
                _log.info("serving gRPC on %s", path)
                try:
                    yield serving
                finally:
                    nursery.cancel_scope.cancel()
                    with trio.CancelScope(shield=True):
                        await _stop(server, path)
    finally:
        sock.close()  # a no-op once the accept task has closed it
        remove_own_socket(serving)


async def _stop(server: _ClosingServer, path: Path) -> None:
    dropped = server.abort_connections()
    with trio.move_on_after(_STOP_GRACE_SECONDS) as timeout:
        await run_asyncio(server.wait_handlers)
    if timeout.cancelled_caught:
        _log.warning("gRPC handlers on %s did not stop within %ss", path, _STOP_GRACE_SECONDS)
    _log.info("stopped gRPC on %s (closed %d connection(s))", path, dropped)
