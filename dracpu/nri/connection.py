"""One NRI socket: the multiplexer plus a ttrpc server (conn 1) and a ttrpc client (conn 2).

:class:`MuxConnection` owns a connected byte stream. Its :meth:`~MuxConnection.run` task reads
frames, demultiplexes them into the two ttrpc byte streams, serves each incoming request on
conn 1 in its own task (the runtime calls the plugin) and matches responses on conn 2 to the
calls made with :meth:`~MuxConnection.call` (the plugin calls the runtime).

Everything is bounded: the decoders hold at most one maximal frame, at most
``max_concurrent_requests`` requests are served at once (more are refused with
RESOURCE_EXHAUSTED), and frames for unknown logical connections are dropped without buffering.
Refusals (bad stream ids, too many requests) are answered by one reply task from a queue of at
most ``max_queued_replies``; when it is full the read loop waits (backpressure), so a peer that
floods requests without reading the answers costs no more memory. Time is bounded too: a write
that the peer does not drain within ``write_timeout`` seconds, or a frame left incomplete for
``frame_timeout`` seconds (slowloris), closes the connection.
A malformed or oversized frame, EOF, a stalled peer or a failed write closes the connection: the
reason is logged once, every pending call fails with :class:`ConnectionClosedError`, and every
request task is cancelled.

The fast path: with ``serve_now`` (a :data:`SyncRequestHandler`), a request arriving while none
is in flight may be answered in the read loop itself, with no task and no deadline scope. On a
``trio.SocketStream`` the loop reads and writes the descriptor directly, waiting only when the
socket has nothing to read or will not take the whole frame.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from dracpu.nri import mux, ttrpc
from dracpu.nri.errors import ConnectionClosedError, FrameError, RpcStatusError
from dracpu.nri.lazy import TtrpcRequest, read_ttrpc_request, ttrpc_response
from dracpu.nri.ttrpc import Code, MessageType
from generated.google.rpc import Status
from generated.ttrpc import Request, Response

log = logging.getLogger("dracpu.nri")

RequestHandler = Callable[[str, str, bytes], Awaitable[bytes]]
"""Serves one unary request: ``(service, method, payload) -> response payload``.

Raise :class:`RpcStatusError` to answer with a specific status code; any other exception is
answered with UNKNOWN and its text (and logged). Cancellation (connection loss or the request's
own deadline) is delivered as ``trio.Cancelled`` and must be allowed to propagate; a request
whose deadline passed gets no answer, exactly as if the handler were still running.
"""

SyncRequestHandler = Callable[[str, str, bytes], bytes | None]
"""Answers one unary request at once, without awaiting: the response payload, or None when it
cannot (the request then goes to the :data:`RequestHandler` in its own task). Raise
:class:`RpcStatusError` for a specific status; any other exception is answered with UNKNOWN.
It runs in the read loop, so it must not block."""

READ_SIZE = 1 << 16
MAX_READS_WITHOUT_CHECKPOINT = 16
"""Reads that found data at once before the read loop yields to other tasks anyway."""
FRAME_TIMEOUT = 10.0
"""Seconds a started frame may stay incomplete before the connection is closed."""
WRITE_TIMEOUT = 10.0
"""Seconds one write may wait for the peer to read before the connection is closed."""
MAX_QUEUED_REPLIES = 16
"""Refusal replies waiting for the socket before the read loop stops reading."""
_MAX_STREAM_ID = 0xFFFFFFFF


@dataclass
class _Pending:
    """A call on conn 2 waiting for its response."""

    done: trio.Event = field(default_factory=trio.Event)
    response: Response | None = None
    error: Exception | None = None


class MuxConnection:
    """The two ttrpc conversations of one NRI socket; see the module docstring.

    The plugin role (default) serves conn 1 and calls on conn 2; ``serve_conn=2, call_conn=1``
    gives the runtime role, which tests use as an in-memory runtime. ``serve_now`` is the
    optional read-loop fast path (module docstring).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        serve: RequestHandler,
        *,
        name: str = "nri",
        max_concurrent_requests: int = 64,
        serve_conn: int = mux.PLUGIN_SERVICE_CONN,
        call_conn: int = mux.RUNTIME_SERVICE_CONN,
        frame_timeout: float = FRAME_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_queued_replies: int = MAX_QUEUED_REPLIES,
        serve_now: SyncRequestHandler | None = None,
    ) -> None:
        self._stream = stream
        # On a socket the loop reads and writes the descriptor itself: a read that finds data
        # costs no scheduler round trip, a write the kernel takes whole costs none either.
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        self._reads_without_wait = 0
        self._serve_now = serve_now
        self._frame_timeout = frame_timeout
        self._write_timeout = write_timeout
        self._refusals, self._refusals_out = trio.open_memory_channel[tuple[int, int, str]](
            max_queued_replies
        )
        self._serve_conn = serve_conn
        self._call_conn = call_conn
        self._serve = serve
        self._name = name
        self._max_concurrent = max_concurrent_requests
        # A semaphore, not a Lock: a write started in the read loop may be finished (and the
        # lock released) by another task, and a frame is never interleaved with another.
        self._write_lock = trio.Semaphore(1, max_value=1)
        self._next_stream_id = 1
        self._last_request_id = 0
        self._pending: dict[int, _Pending] = {}
        self._handler_tasks: set[trio.lowlevel.Task] = set()
        self._inflight = 0  # counted when accepted, before the task first runs
        self._closed = trio.Event()
        self._close_reason = ""
        self._cancel_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        """True once the connection is closed (or closing)."""
        return bool(self._close_reason)

    @property
    def close_reason(self) -> str:
        """Why the connection closed; empty while it is open."""
        return self._close_reason

    def in_handler(self) -> bool:
        """True when the calling task is one of this connection's request-handler tasks."""
        return trio.lowlevel.current_task() in self._handler_tasks

    def close(self, reason: str) -> None:
        """Close the connection (idempotent); :meth:`run` returns ``reason`` soon after."""
        if not self._close_reason:
            self._close_reason = reason
        for pending in self._pending.values():
            if pending.error is None and pending.response is None:
                pending.error = ConnectionClosedError(self._close_reason)
                pending.done.set()
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def wait_closed(self) -> str:
        """Wait until :meth:`run` has finished; return the close reason.

        Cancellation: only the wait is abandoned; the connection is unaffected.
        """
        await self._closed.wait()
        return self._close_reason

    # ------------------------------------------------------------------ main task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> str:
        """Read and dispatch until the connection closes; return the (logged) close reason.

        Started with ``nursery.start``, it reports started once it is reading, so requests sent by
        the peer from then on are served. Peer misbehaviour never raises out of here.

        Cancellation: cancelling the caller closes the connection: request tasks are cancelled,
        pending calls fail with :class:`ConnectionClosedError`, the stream is closed.
        """
        level = logging.INFO
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._cancel_scope = nursery.cancel_scope
                if self._close_reason:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._reply_refusals)
                task_status.started()
                try:
                    await self._read_loop()
                    self.close("peer closed the socket (EOF)")
                except FrameError as exc:
                    self.close(f"protocol error: {exc}")
                    level = logging.WARNING
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self.close(f"socket error: {exc!r}")
        finally:
            if not self._close_reason:
                self._close_reason = "cancelled locally"
            self.close(self._close_reason)
            await trio.aclose_forcefully(self._stream)
            self._closed.set()
        log.log(level, "%s: connection closed: %s", self._name, self._close_reason)
        return self._close_reason

    async def _read_loop(self) -> None:
        frames = mux.Decoder(origin=f"{self._name} mux")
        server = ttrpc.Decoder(origin=f"{self._name} conn {self._serve_conn} (served)")
        client = ttrpc.Decoder(origin=f"{self._name} conn {self._call_conn} (called)")
        partial_since: float | None = None  # when the oldest incomplete frame started
        while True:
            buffered = frames.buffered + server.buffered + client.buffered
            if not buffered:
                partial_since = None
            elif partial_since is None:
                partial_since = trio.current_time()
            deadline = math.inf if partial_since is None else partial_since + self._frame_timeout
            data: bytes | bytearray = b""
            if partial_since is None:  # between frames: no deadline, no cancel scope to set up
                data = await self._receive()
                if not data:
                    return
            else:
                with trio.move_on_at(deadline):
                    data = await self._receive()
                    if not data:
                        return
            if not data:
                raise FrameError(
                    f"frame incomplete for {self._frame_timeout} s ({buffered} bytes buffered)",
                    value=buffered,
                    origin=f"{self._name} mux",
                )
            for conn_id, payload in frames.feed(data):
                if conn_id == self._serve_conn:
                    for msg in server.feed(payload):
                        await self._on_server_message(msg)
                elif conn_id == self._call_conn:
                    for msg in client.feed(payload):
                        self._on_client_message(msg)
                else:
                    log.debug(
                        "%s: dropped %d bytes for unopened conn %d",
                        self._name,
                        len(payload),
                        conn_id,
                    )

    async def _receive(self) -> bytes | bytearray:
        """The next bytes from the peer (empty at EOF). On a socket: read the descriptor, and
        wait (a checkpoint) only when nothing is there; after
        :data:`MAX_READS_WITHOUT_CHECKPOINT` reads in a row that found data, yield anyway so a
        peer that never pauses cannot starve the other tasks or delay a cancellation."""
        fd = self._fd
        if fd is None:
            return await self._stream.receive_some(READ_SIZE)
        self._reads_without_wait += 1
        if self._reads_without_wait > MAX_READS_WITHOUT_CHECKPOINT:
            self._reads_without_wait = 0
            await trio.lowlevel.checkpoint()
        while True:
            try:
                return os.read(fd, READ_SIZE)
            except BlockingIOError:
                self._reads_without_wait = 0
                await trio.lowlevel.wait_readable(fd)

    # ------------------------------------------------------------------ server side (conn 1)

    async def _on_server_message(self, msg: ttrpc.Message) -> None:
        if msg.type != MessageType.REQUEST:
            # Go's server ignores unknown types for forward compatibility; NRI sends none.
            log.debug("%s: ignored ttrpc message type %d on conn 1", self._name, msg.type)
            return
        assert self._nursery is not None
        if msg.stream_id % 2 == 0:
            await self._refusals.send(
                (
                    msg.stream_id,
                    Code.INVALID_ARGUMENT,
                    "StreamID must be odd for client initiated streams",
                )
            )
            return
        if msg.stream_id <= self._last_request_id:
            await self._refusals.send(
                (
                    msg.stream_id,
                    Code.INVALID_ARGUMENT,
                    "StreamID cannot be re-used and must increment",
                )
            )
            return
        self._last_request_id = msg.stream_id
        request: TtrpcRequest | None = None
        if self._serve_now is not None and self._inflight == 0:
            # Nothing else in flight, so answering now keeps the requests in order.
            request = self._try_read_request(msg.body)
            if request is not None and self._answer_now(msg.stream_id, request):
                return
        if self._inflight >= self._max_concurrent:
            await self._refusals.send(
                (
                    msg.stream_id,
                    Code.RESOURCE_EXHAUSTED,
                    f"more than {self._max_concurrent} concurrent requests",
                )
            )
            return
        self._inflight += 1
        self._nursery.start_soon(self._serve_one, msg, request)

    @staticmethod
    def _try_read_request(body: bytes) -> TtrpcRequest | None:
        """The request's envelope, or None when it is malformed (the task path answers it)."""
        try:
            return read_ttrpc_request(body)
        except Exception:
            return None

    def _answer_now(self, stream_id: int, request: TtrpcRequest) -> bool:
        """Serve ``request`` in the read loop through ``serve_now``; False when it declined."""
        assert self._serve_now is not None
        method = f"{request.service}/{request.method}"
        status: Status | None = None
        payload: bytes | None = b""
        try:
            payload = self._serve_now(request.service, request.method, request.payload)
        except RpcStatusError as exc:
            status = Status(code=exc.code, message=exc.status_message)
        except Exception as exc:
            log.exception("%s: handler for %s failed", self._name, method)
            status = Status(code=Code.UNKNOWN, message=str(exc) or type(exc).__name__)
        if payload is None:
            return False
        self._send_soon(self._serve_conn, self._response(stream_id, method, status, payload))
        return True

    def _response(
        self, stream_id: int, method: str, status: Status | None, payload: bytes
    ) -> bytes:
        """The encoded ttrpc response; RESOURCE_EXHAUSTED instead of one over 4 MiB."""
        body = bytes(Response(status=status)) if status is not None else ttrpc_response(payload)
        if len(body) > ttrpc.MAX_MESSAGE_LENGTH:
            log.error(
                "%s: response to %s is %d bytes, over the ttrpc limit",
                self._name,
                method,
                len(body),
            )
            status = Status(
                code=Code.RESOURCE_EXHAUSTED, message=f"response of {len(body)} bytes exceeds 4 MiB"
            )
            body = bytes(Response(status=status))
        return ttrpc.encode(stream_id, MessageType.RESPONSE, body)

    async def _serve_one(self, msg: ttrpc.Message, request: TtrpcRequest | None = None) -> None:
        task = trio.lowlevel.current_task()
        self._handler_tasks.add(task)
        try:
            if request is None:
                try:
                    request = read_ttrpc_request(msg.body)
                except Exception as exc:
                    await self._reply_error(
                        msg.stream_id, Code.INVALID_ARGUMENT, f"undecodable ttrpc request: {exc}"
                    )
                    return
            method = f"{request.service}/{request.method}"
            timeout = request.timeout_nano / 1e9 if request.timeout_nano > 0 else math.inf
            payload = b""
            status: Status | None = None
            with trio.move_on_after(timeout) as scope:
                try:
                    payload = await self._serve(request.service, request.method, request.payload)
                except RpcStatusError as exc:
                    status = Status(code=exc.code, message=exc.status_message)
                except Exception as exc:
                    log.exception("%s: handler for %s failed", self._name, method)
                    status = Status(code=Code.UNKNOWN, message=str(exc) or type(exc).__name__)
            if scope.cancelled_caught:
                # No answer on purpose: the caller's own timeout is what NRI runtimes treat as
                # fatal (drop the plugin, go on without it). A DEADLINE_EXCEEDED status racing
                # ahead of that timeout would instead fail the CRI operation.
                log.warning(
                    "%s: handler for %s cancelled at its %.3f s deadline; not answering",
                    self._name,
                    method,
                    timeout,
                )
                return
            await self._send(
                self._serve_conn, self._response(msg.stream_id, method, status, payload)
            )
        except ConnectionClosedError:
            pass
        finally:
            self._handler_tasks.discard(task)
            self._inflight -= 1

    async def _reply_refusals(self) -> None:
        """The one task answering refused requests, in order, from the bounded queue."""
        async for stream_id, code, message in self._refusals_out:
            await self._reply_error(stream_id, code, message)

    async def _reply_error(self, stream_id: int, code: int, message: str) -> None:
        body = bytes(Response(status=Status(code=code, message=message)))
        with contextlib.suppress(ConnectionClosedError):
            await self._send(self._serve_conn, ttrpc.encode(stream_id, MessageType.RESPONSE, body))

    # ------------------------------------------------------------------ client side (conn 2)

    def _on_client_message(self, msg: ttrpc.Message) -> None:
        if msg.type != MessageType.RESPONSE:
            log.debug("%s: ignored ttrpc message type %d on conn 2", self._name, msg.type)
            return
        pending = self._pending.get(msg.stream_id)
        if pending is None:
            log.debug("%s: dropped response for unknown stream %d", self._name, msg.stream_id)
            return
        try:
            pending.response = Response.parse(msg.body)
        except Exception as exc:
            pending.error = RpcStatusError(Code.INTERNAL, f"undecodable ttrpc response: {exc}")
        pending.done.set()

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (sent as timeout_nano)
    ) -> bytes:
        """Call ``service/method`` on the peer (conn 2 by default); return the response payload.

        ``timeout`` (seconds) bounds the wait for the answer and is sent as ``timeout_nano``.
        Raises :class:`RpcStatusError` for a non-OK status (DEADLINE_EXCEEDED when ``timeout``
        expires), :class:`ConnectionClosedError` when the connection is or becomes closed,
        :class:`OversizedMessageError` for a request over 4 MiB.

        Cancellation: the call is abandoned; a late response is dropped. If cancellation lands
        in the middle of writing the request, the connection is closed, since a half-written
        frame cannot be taken back.
        """
        name = f"{service}/{method}"
        timeout_nano = int(timeout * 1e9) if timeout is not None else 0
        body = bytes(
            Request(service=service, method=method, payload=payload, timeout_nano=timeout_nano)
        )
        pending = _Pending()
        async with self._write_lock:
            if self._close_reason:
                raise ConnectionClosedError(self._close_reason)
            stream_id = self._next_stream_id
            if stream_id > _MAX_STREAM_ID:
                self.close("ttrpc stream ids exhausted")
                raise ConnectionClosedError(self._close_reason)
            data = mux.encode_message(
                self._call_conn,
                ttrpc.encode(stream_id, MessageType.REQUEST, body, method=name),
            )
            self._next_stream_id += 2
            self._pending[stream_id] = pending
            try:
                await self._write(data)
            except BaseException:
                self._pending.pop(stream_id, None)
                raise
        try:
            with trio.fail_after(timeout if timeout is not None else math.inf):
                await pending.done.wait()
        except trio.TooSlowError:
            raise RpcStatusError(
                Code.DEADLINE_EXCEEDED, f"no answer within {timeout} s", method=name
            ) from None
        finally:
            self._pending.pop(stream_id, None)
        if pending.error is not None:
            raise pending.error
        assert pending.response is not None
        status = pending.response.status
        if status is not None and status.code != Code.OK:
            raise RpcStatusError(status.code, status.message, method=name)
        return bytes(pending.response.payload)

    # ------------------------------------------------------------------ writing

    async def _send(self, conn_id: int, message: bytes) -> None:
        data = mux.encode_message(conn_id, message)
        # Uncontended (the usual case) the lock is taken without a scheduler round trip.
        # Contended, this waits (and can be cancelled) as before.
        lock = self._write_lock
        if lock.value:
            lock.acquire_nowait()
        else:
            await lock.acquire()
        try:
            if self._close_reason:
                raise ConnectionClosedError(self._close_reason)
            await self._write(data)
        finally:
            lock.release()

    def _send_soon(self, conn_id: int, message: bytes) -> None:
        """Send ``message`` without awaiting: written at once when the socket is free and takes
        it, otherwise finished (or sent) by a task of the connection's nursery, in one piece."""
        assert self._nursery is not None
        data = mux.encode_message(conn_id, message)
        lock = self._write_lock
        if self._fd is None or not lock.value or self._close_reason:
            self._nursery.start_soon(self._send_quietly, data, False)
            return
        lock.acquire_nowait()
        try:
            written = self._write_fd(data)
        except ConnectionClosedError:
            lock.release()
            return
        if written == len(data):
            lock.release()
        else:  # the socket buffer is full: a task finishes the frame, then releases the lock
            self._nursery.start_soon(self._send_quietly, data[written:], True)

    async def _send_quietly(self, data: bytes, locked: bool) -> None:
        """Write ``data`` under the lock (already held when ``locked``); a closed connection
        is not an error here."""
        lock = self._write_lock
        try:
            if not locked:
                await lock.acquire()
                locked = True
            if not self._close_reason:
                await self._write(data)
        except ConnectionClosedError:
            pass
        finally:
            if locked:
                lock.release()

    def _write_fd(self, data: bytes) -> int:
        """Write what the socket takes now, without waiting; the number of bytes written.
        A failed write closes the connection (:class:`ConnectionClosedError`)."""
        assert self._fd is not None
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self.close(f"write failed: {exc!r}")
            raise ConnectionClosedError(self._close_reason) from exc

    async def _write(self, data: bytes) -> None:
        """Write under the lock; any failure or cancellation mid-write closes the connection,
        and so does a peer that does not take the bytes within ``write_timeout`` seconds."""
        if self._fd is not None:
            written = self._write_fd(data)
            if written == len(data):
                return
            data = data[written:]
        with trio.move_on_after(self._write_timeout) as scope:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.close(f"write failed: {exc!r}")
                raise ConnectionClosedError(self._close_reason) from exc
            except BaseException:
                if scope.cancel_called:
                    self.close(
                        f"peer stopped reading: a {len(data)}-byte write did not complete "
                        f"within {self._write_timeout} s"
                    )
                else:
                    self.close("write interrupted by cancellation")
                raise
        if scope.cancelled_caught:
            raise ConnectionClosedError(self._close_reason)
