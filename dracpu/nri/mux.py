"""The NRI socket multiplexer's framing (containerd/nri ``pkg/net/multiplex``).

A frame is ``conn_id u32 | length u32`` (big-endian) and ``length`` payload bytes: an arbitrary
slice of that logical connection's byte stream. There are no control frames. Conn 1 carries the
Plugin service (the runtime calls us), conn 2 the Runtime service (we call the runtime).

The Go receiver hands one frame to each ``Read`` and fails reads into a smaller buffer; its ttrpc
channel reads through a 4096-byte ``bufio.Reader``. So a ttrpc message is sent the way Go's own
``bufio.Writer`` emits it: one frame when it fits in 4096 bytes, else a 4096-byte frame and one
frame with the rest. Frames never mix two messages. Pure code: no I/O.
"""

from __future__ import annotations

import struct

from dracpu.nri.framing import FrameSplitter

PLUGIN_SERVICE_CONN = 1
RUNTIME_SERVICE_CONN = 2

HEADER = struct.Struct(">II")
HEADER_SIZE = HEADER.size  # 8
GO_READ_BUFFER = 4096
# Old Go senders (NRI <= v0.6) wrote up to 1<<24 bytes per frame; newer ones 4 MiB + 10.
MAX_PAYLOAD = 1 << 24


def encode_message(conn_id: int, message: bytes) -> bytes:
    """Frame one complete ttrpc message for ``conn_id`` using Go's 4096 + rest split."""
    if len(message) <= GO_READ_BUFFER:
        return HEADER.pack(conn_id, len(message)) + message
    head, rest = message[:GO_READ_BUFFER], message[GO_READ_BUFFER:]
    return HEADER.pack(conn_id, len(head)) + head + HEADER.pack(conn_id, len(rest)) + rest


class Decoder:
    """Turns the raw socket byte stream into ``(conn_id, payload)`` frames.

    Bounded: at most one incomplete frame (≤ 16 MiB + 8 bytes) plus the last chunk is buffered;
    a header announcing a larger payload raises :class:`FrameError` immediately.
    """

    def __init__(self, origin: str = "nri mux") -> None:
        self._frames = FrameSplitter(
            HEADER,
            1,
            MAX_PAYLOAD,
            lambda f: f"mux frame for conn {f[0]} announces {f[1]} bytes (max {MAX_PAYLOAD})",
            origin,
        )

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a frame."""
        return self._frames.buffered

    def feed(self, data: bytes | bytearray) -> list[tuple[int, bytes]]:
        """Append ``data`` and return every frame it completes, in order."""
        return [(fields[0], payload) for fields, payload in self._frames.feed(data)]
