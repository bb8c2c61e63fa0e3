"""Replace a file atomically: a temp file in the same directory, then ``rename``.

Readers (containerd's CDI cache, a workload reading its device metadata) see the old content or
the new, never a torn write. Callers name the temp file's prefix, so that leftovers from a crash
can be told apart from other writers' (the CDI library uses ``spec.*.tmp``) and removed at
start. Not durable: no fsync (the write-ahead checkpoint is the durable record, and
everything written here is regenerated from it).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(target: Path, data: bytes, *, tmp_prefix: str, mode: int = 0o644) -> None:
    """Write ``data`` to ``target`` through a temp file and ``os.replace``; parents are created.

    Raises ``OSError`` (the caller names the file in its own error type). The temp file never
    survives a failed write. Synchronous: not interruptible by cancellation.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix, suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
