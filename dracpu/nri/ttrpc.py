"""ttrpc message framing: the 10-byte header and an incremental, bounded decoder.

A ttrpc message is ``length u32 | stream_id u32 | type u8 | flags u8`` (big-endian) followed by
``length`` bytes of protobuf (``ttrpc.Request`` or ``ttrpc.Response``). Every Go ttrpc version
caps ``length`` at 4 MiB; we refuse to send more and treat receiving more as a protocol error, so
a decoder never buffers more than one maximal message. Pure code: no I/O.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from dracpu.nri.errors import OversizedMessageError
from dracpu.nri.framing import FrameSplitter

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size  # 10
MAX_MESSAGE_LENGTH = 4 << 20  # ttrpc's messageLengthMax, identical in every release since v1.1


class MessageType(enum.IntEnum):
    """The ttrpc message types; NRI uses only unary Request/Response."""

    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class Code(enum.IntEnum):
    """The gRPC status codes ttrpc carries in ``google.rpc.Status.code``."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded ttrpc message; ``type`` is kept as an int so unknown types can be ignored."""

    stream_id: int
    type: int
    flags: int
    body: bytes


def encode(
    stream_id: int, msg_type: int, body: bytes, *, flags: int = 0, method: str = ""
) -> bytes:
    """Return header + body; raises :class:`OversizedMessageError` for bodies over 4 MiB."""
    if len(body) > MAX_MESSAGE_LENGTH:
        raise OversizedMessageError(len(body), method=method)
    return HEADER.pack(len(body), stream_id, msg_type, flags) + body


class Decoder:
    """Turns an arbitrarily chunked ttrpc byte stream into messages.

    The buffer holds at most one incomplete message (≤ 4 MiB + 10 bytes) plus the last chunk
    fed; a header announcing a longer body raises :class:`FrameError` at once, before any of
    that body is buffered.
    """

    def __init__(self, origin: str = "ttrpc") -> None:
        self._frames = FrameSplitter(
            HEADER,
            0,
            MAX_MESSAGE_LENGTH,
            lambda f: f"ttrpc message length {f[0]} exceeds {MAX_MESSAGE_LENGTH}",
            origin,
        )

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a message."""
        return self._frames.buffered

    def feed(self, data: bytes | bytearray) -> list[Message]:
        """Append ``data`` and return every message it completes, in order."""
        return [
            Message(fields[1], fields[2], fields[3], payload)
            for fields, payload in self._frames.feed(data)
        ]
