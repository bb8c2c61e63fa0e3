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
import logging
import os
import socket
import stat
import weakref
from collections.abc import AsyncIterator, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpclib.server
import trio

from dracpu.kubelet.aio_bridge import run_asyncio
from dracpu.kubelet.errors import KubeletSocketError

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


class _TrackedProtocol(asyncio.Protocol):
    """Wraps grpclib's per-connection protocol to remember the transport for later abort."""

    def __init__(self, inner: asyncio.Protocol, live: weakref.WeakSet[_TrackedProtocol]) -> None:
        self._inner = inner
        self._live = live
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._live.add(self)
        if isinstance(transport, asyncio.WriteTransport):
            proxy: Any = _CoalescingTransport(transport, asyncio.get_running_loop())
            self._inner.connection_made(proxy)
        else:
            self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.discard(self)
        self._inner.connection_lost(exc)

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            # abort(), not close(): do not wait to flush; the peer sees the connection end now.
            transport: Any = self.transport
            transport.abort()


class _ClosingServer(grpclib.server.Server):
    """A grpclib ``Server`` that can also drop the connections it accepted."""

    def __init__(self, handlers: Collection[Any]) -> None:
        super().__init__(handlers)
        self._live: weakref.WeakSet[_TrackedProtocol] = weakref.WeakSet()

    # grpclib 0.4.9 (pinned) creates one protocol per accepted connection in this method.
    def _protocol_factory(self) -> Any:
        return _TrackedProtocol(super()._protocol_factory(), self._live)

    def abort_connections(self) -> int:
        """Abort every accepted connection; returns how many there were."""
        live = list(self._live)
        for proto in live:
            proto.abort()
        return len(live)


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
        sock.listen(128)
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
async def serve_unix_grpc(path: Path, services: Collection[Any]) -> AsyncIterator[ServingSocket]:
    """Serve the grpclib ``services`` on the unix socket ``path`` for the duration of the block.

    Must run inside ``trio_asyncio.open_loop()``. On entry a stale socket file at ``path`` is
    removed and the socket is listening when the block body starts. On exit (normal, error or
    cancellation) the listener is closed, every accepted connection is aborted, running handlers
    are cancelled (waiting at most a few seconds for them), and the socket file is removed if it
    is still ours.

    Cancellation: cancelling the enclosing trio scope ends the block as above; clients with calls
    in flight or idle connections see the connection close (``UNAVAILABLE``), never a hang. The
    shutdown steps run shielded so they complete even though the scope is cancelled.
    """
    sock, serving = _listen(path)
    server: _ClosingServer | None = None
    try:

        async def _start() -> _ClosingServer:
            srv = _ClosingServer(services)
            await srv.start(sock=sock)
            return srv

        server = await run_asyncio(_start)
        _log.info("serving gRPC on %s", path)
        yield serving
    finally:
        with trio.CancelScope(shield=True):
            if server is not None:
                await _stop(server, path)
            else:
                sock.close()
            remove_own_socket(serving)


async def _stop(server: _ClosingServer, path: Path) -> None:
    dropped = server.abort_connections()
    server.close()

    async def _wait() -> None:
        await server.wait_closed()

    with trio.move_on_after(_STOP_GRACE_SECONDS) as timeout:
        await run_asyncio(_wait)
    if timeout.cancelled_caught:
        _log.warning("gRPC handlers on %s did not stop within %ss", path, _STOP_GRACE_SECONDS)
    _log.info("stopped gRPC on %s (closed %d connection(s))", path, dropped)
