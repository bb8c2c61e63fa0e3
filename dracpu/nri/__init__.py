"""NRI (Node Resource Interface) plugin transport over ttrpc, trio-native.

The boundary to the container runtime: :class:`NriPlugin` connects to the runtime's NRI socket,
registers, and forwards events to an :class:`NriHandler` (the policy lives behind it).
:class:`MuxConnection` and the :mod:`~dracpu.nri.mux` / :mod:`~dracpu.nri.ttrpc` codecs are the
layers beneath. Wire rules: docs/dev/protocols.md, section NRI.
"""

from dracpu.backoff import Backoff
from dracpu.nri.connection import MuxConnection, RequestHandler
from dracpu.nri.errors import (
    ConnectionClosedError,
    FrameError,
    OversizedMessageError,
    RpcStatusError,
)
from dracpu.nri.events import DEFAULT_EVENTS, mask_of, runtime_valid_mask
from dracpu.nri.handler import NriHandler, RuntimeInfo
from dracpu.nri.plugin import DEFAULT_SOCKET_PATH, NriPlugin

__all__ = [
    "DEFAULT_EVENTS",
    "DEFAULT_SOCKET_PATH",
    "Backoff",
    "ConnectionClosedError",
    "FrameError",
    "MuxConnection",
    "NriHandler",
    "NriPlugin",
    "OversizedMessageError",
    "RequestHandler",
    "RpcStatusError",
    "RuntimeInfo",
    "mask_of",
    "runtime_valid_mask",
]
