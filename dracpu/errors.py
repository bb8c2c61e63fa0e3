"""The one exception tree of dracpu.

Every error carries the offending value and where it came from, so a log line or a gRPC error
names both. Adapters translate foreign errors into these, re-raising ``from exc``::

    DracpuError
    ├── InvalidValueError          a bad value from a flag, file, env or API object
    │   ├── CpuSetParseError       a malformed Linux cpu list
    │   ├── ClaimError             a ResourceClaim unusable on this node (core/claims.py)
    │   └── CpusetEnvError         a malformed DRA_CPUSET_* env entry (core/cdi.py)
    ├── TopologyError              sysfs is unreadable or inconsistent
    ├── AllocationError            no CPU set satisfies a request
    ├── ProtocolError              a peer broke a wire protocol (gRPC, ttrpc, NRI)
    └── KubeApiError               the Kubernetes API answered with an error Status
"""

from __future__ import annotations

import reprlib

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 120
_SHOWN.maxlevel = 2
_SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxset = _SHOWN.maxtuple = 8


def shown(value: object) -> str:
    """A repr of ``value`` for an error message, bounded in length and depth (a hostile value,
    such as a YAML alias bomb, must not make the message itself unbounded)."""
    return _SHOWN.repr(value)


class DracpuError(Exception):
    """Root of every error dracpu raises on purpose."""


class InvalidValueError(DracpuError, ValueError):
    """A value is malformed or out of range; ``origin`` says where it came from."""

    def __init__(self, message: str, *, value: object = None, origin: str = "") -> None:
        self.value = value
        self.origin = origin
        super().__init__(f"{origin}: {message}" if origin else message)


class CpuSetParseError(InvalidValueError):
    """A Linux cpu list (``0-3,8``) could not be parsed; names the bad token."""


class TopologyError(DracpuError):
    """The CPU topology could not be read from sysfs, or it contradicts itself."""

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        super().__init__(f"{message}: {path}" if path else message)


class AllocationError(DracpuError):
    """No CPU set satisfies a request; the message says why."""


class ProtocolError(DracpuError):
    """A peer violated a wire protocol."""


class KubeApiError(DracpuError):
    """The Kubernetes API server returned an error."""
