"""Helpers for the reliability tests: a small tmpfs to fill or make read-only, and the
in-process daemon of tests/daemon (grpcio as the kubelet, the in-memory API server)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

TMPFS_SIZE = "64k"


def need_root(what: str) -> None:
    """Skip the calling test unless running as root; ``what`` says why root is needed."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {what}")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = TMPFS_SIZE) -> Iterator[Path]:
    """Mount a ``size`` tmpfs on ``path`` (created) for the block; unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    """Remount the tmpfs at ``path`` ``ro`` or ``rw``."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Fill the file system holding ``directory`` until it reports ENOSPC; returns the filler."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    # Also the last few bytes, so even a tiny write finds no room.
    with filler.open("ab", buffering=0) as f, contextlib.suppress(OSError):
        while f.write(b"\0"):
            pass
    return filler
