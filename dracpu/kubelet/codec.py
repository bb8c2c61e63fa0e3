"""The gRPC message codec of every kubelet-facing server: betterproto2, decoded strictly.

grpclib's default ``ProtoCodec`` hands the bytes to ``FromString``: a malformed request then
fails inside the handler as an arbitrary exception, which grpclib answers with ``UNKNOWN`` and a
full traceback in the log, and a lenient decode can hand a handler a truncated string or a field
of the wrong Python type. :class:`StrictProtoCodec` checks the wire format first
(:func:`dracpu.protowire.check_message`) and answers a bad request with ``INVALID_ARGUMENT``
and one log line; an oversized one (which the connection guard in :mod:`.unix_grpc` normally
refuses before buffering it) with ``RESOURCE_EXHAUSTED``.
"""

from __future__ import annotations

import logging
from typing import Any

import grpclib.const
import grpclib.exceptions
from grpclib.encoding.base import CodecBase

from dracpu.kubelet.ratelog import RateLimitedLog
from dracpu.protowire import MalformedMessageError, parse_strict

_log = logging.getLogger(__name__)
# One line per bad request, but at most one per message type every 10 s (with a count).
_warn = RateLimitedLog(_log)

# grpc-go's default maximum receive message size.
DEFAULT_MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024


class StrictProtoCodec(CodecBase):
    """``application/grpc+proto`` for betterproto2 messages, with the strict pre-decode check."""

    __content_subtype__ = "proto"

    def __init__(self, max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_MESSAGE_BYTES) -> None:
        self._max = max_receive_message_bytes

    def encode(self, message: Any, message_type: Any) -> bytes:
        if not isinstance(message, message_type):
            raise TypeError(f"message must be {message_type.__name__}, not {type(message)!r}")
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if len(data) > self._max:
            _warn.warning(
                f"size:{message_type.__name__}",
                "refused a %d-byte %s (limit %d)",
                len(data),
                message_type.__name__,
                self._max,
            )
            raise grpclib.exceptions.GRPCError(
                grpclib.const.Status.RESOURCE_EXHAUSTED,
                f"received message larger than max ({len(data)} vs. {self._max})",
            )
        try:
            return parse_strict(message_type, data)
        except MalformedMessageError as exc:
            _warn.warning(f"malformed:{message_type.__name__}", "rejected a request: %s", exc)
            raise grpclib.exceptions.GRPCError(
                grpclib.const.Status.INVALID_ARGUMENT, str(exc)
            ) from None
