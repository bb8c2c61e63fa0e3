"""Errors of the kubelet boundary (sockets and paths), all rooted at :class:`DracpuError`."""

from __future__ import annotations

from dracpu.errors import DracpuError


class KubeletSocketError(DracpuError):
    """A kubelet-facing unix socket could not be created, served or removed.

    ``path`` is the socket path the error is about; the message names it too.
    """

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(f"{message}: {path}")
