"""Split an arbitrarily chunked byte stream into length-prefixed frames. Pure code: no I/O.

Both NRI layers frame this way: the socket multiplexer (``conn_id | length``) and ttrpc
(``length | stream_id | type | flags``). The buffer holds at most one incomplete frame plus the
last chunk fed; a header announcing more than ``limit`` bytes raises :class:`FrameError` at once,
before any of that payload is buffered.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from dracpu.nri.errors import FrameError


class FrameSplitter:
    """Turns chunks into ``(header fields, payload)`` frames, in order."""

    def __init__(
        self,
        header: struct.Struct,
        length_field: int,
        limit: int,
        too_long: Callable[[tuple[int, ...]], str],
        origin: str,
    ) -> None:
        self._header = header
        self._length_field = length_field
        self._limit = limit
        self._too_long = too_long
        self._origin = origin
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray) -> list[tuple[tuple[int, ...], bytes]]:
        """Append ``data`` and return every frame it completes, in order."""
        self._buf += data
        size = self._header.size
        out: list[tuple[tuple[int, ...], bytes]] = []
        while len(self._buf) >= size:
            fields = self._header.unpack_from(self._buf)
            length = fields[self._length_field]
            if length > self._limit:
                raise FrameError(self._too_long(fields), value=length, origin=self._origin)
            end = size + length
            if len(self._buf) < end:
                break
            out.append((fields, bytes(self._buf[size:end])))
            del self._buf[:end]
        return out
