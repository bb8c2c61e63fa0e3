"""A hostile NRI runtime: raw bytes on a real unix socket, for the hostile-peer tests and fuzzing.

Nothing here uses dracpu's connection code to talk; frames are packed by hand (the mux and ttrpc
headers are four and ten bytes of struct). The attacks: flood refused requests without reading,
leave a frame incomplete, trickle a frame byte by byte, send garbage or a truncated payload.
"""

from __future__ import annotations

import struct

import trio

from generated.ttrpc import Request, Response

MUX = struct.Struct(">II")
TTRPC = struct.Struct(">IIBB")
PLUGIN = "nri.pkg.api.v1alpha1.Plugin"


def request_frame(stream_id: int, method: str = "Shutdown", payload: bytes = b"") -> bytes:
    """One mux frame on conn 1 carrying one ttrpc request."""
    body = bytes(Request(service=PLUGIN, method=method, payload=payload))
    message = TTRPC.pack(len(body), stream_id, 1, 0) + body
    return MUX.pack(1, len(message)) + message


def refused_flood(count: int) -> bytes:
    """``count`` requests with even stream ids, each answered by a refusal."""
    return b"".join(request_frame(2 * (i + 1)) for i in range(count))


async def accept_one(path: str, task_status: trio.TaskStatus[trio.SocketListener]) -> None:
    """Listen on ``path``; reports the listener (accept from it yourself)."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    task_status.started(listener)
    try:
        await trio.sleep_forever()
    finally:
        await trio.aclose_forcefully(listener)


async def flood_without_reading(stream: trio.abc.Stream, count: int) -> int:
    """Send ``count`` refused requests, never reading; returns how many bytes got out."""
    data = refused_flood(count)
    sent = 0
    step = 1 << 16
    try:
        for i in range(0, len(data), step):
            await stream.send_all(data[i : i + step])
            sent += len(data[i : i + step])
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return sent


async def read_until_eof(stream: trio.abc.Stream) -> int:
    """Drain the stream; returns the byte count once the other side closes."""
    total = 0
    try:
        while data := await stream.receive_some(1 << 16):
            total += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return total


async def answer_registration(stream: trio.abc.Stream) -> None:
    """Read the plugin's first call on conn 2 (RegisterPlugin) and answer it OK, so the plugin
    keeps the session open and the attack that follows meets its timeouts, not registration's."""
    raw = bytearray()
    conn2 = bytearray()
    while True:
        while len(raw) >= MUX.size:
            conn_id, length = MUX.unpack_from(raw)
            if len(raw) < MUX.size + length:
                break
            if conn_id == 2:
                conn2 += raw[MUX.size : MUX.size + length]
            del raw[: MUX.size + length]
        if len(conn2) >= TTRPC.size:
            length, stream_id, _, _ = TTRPC.unpack_from(conn2)
            if len(conn2) >= TTRPC.size + length:
                body = bytes(Response())
                message = TTRPC.pack(len(body), stream_id, 2, 0) + body
                await stream.send_all(MUX.pack(2, len(message)) + message)
                return
        data = await stream.receive_some(1 << 16)
        if not data:
            raise trio.BrokenResourceError("plugin closed before registering")
        raw += data
