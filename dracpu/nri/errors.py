"""Errors of the NRI transport, all rooted in :class:`dracpu.errors.DracpuError`.

::

    ProtocolError
    ├── FrameError            a mux or ttrpc frame is malformed or too large (connection closes)
    └── OversizedMessageError we were asked to send a ttrpc body larger than 4 MiB
    DracpuError
    ├── RpcStatusError        the peer answered a ttrpc call with a non-OK google.rpc.Status
    └── ConnectionClosedError the NRI socket closed while a call was pending, or before it
"""

from __future__ import annotations

from dracpu.errors import DracpuError, ProtocolError


class FrameError(ProtocolError):
    """A frame on the NRI socket broke the wire format; ``value`` is the offending field."""

    def __init__(self, message: str, *, value: object = None, origin: str = "") -> None:
        self.value = value
        self.origin = origin
        super().__init__(f"{origin}: {message}" if origin else message)


class OversizedMessageError(ProtocolError):
    """A ttrpc message body exceeds the 4 MiB limit every Go peer enforces; it was not sent."""

    def __init__(self, size: int, *, method: str = "") -> None:
        self.size = size
        self.method = method
        where = f" for {method}" if method else ""
        super().__init__(f"ttrpc message body of {size} bytes{where} exceeds 4194304 bytes")


class RpcStatusError(DracpuError):
    """A ttrpc call failed with a google.rpc.Status; carries the gRPC ``code`` and message."""

    def __init__(self, code: int, message: str, *, method: str = "") -> None:
        self.code = code
        self.status_message = message
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}ttrpc status {code}: {message}")


class ConnectionClosedError(DracpuError):
    """The NRI connection is gone (EOF, protocol error, or not connected); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"NRI connection closed: {reason}")
