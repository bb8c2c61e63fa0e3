"""A typed, trio-friendly face on ``inotify_simple`` (which ships no type information).

``inotify_simple`` is a small maintained ctypes wrapper of inotify(7); it exposes the
descriptor, so trio waits for it with :func:`trio.lowlevel.wait_readable` and reads without
blocking. No thread, no asyncio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import inotify_simple  # type: ignore[import-untyped]
import trio

__all__ = [
    "CREATE",
    "DELETE",
    "DELETE_SELF",
    "IGNORED",
    "ISDIR",
    "MODIFY",
    "MOVED_FROM",
    "MOVED_TO",
    "Q_OVERFLOW",
    "Inotify",
    "InotifyEvent",
]

MODIFY = 0x2
MOVED_FROM = 0x40
MOVED_TO = 0x80
CREATE = 0x100
DELETE = 0x200
DELETE_SELF = 0x400
Q_OVERFLOW = 0x4000
IGNORED = 0x8000
ISDIR = 0x40000000


@dataclass(frozen=True, slots=True)
class InotifyEvent:
    """One inotify event: watch descriptor, mask and the child's name ("" for the dir itself)."""

    wd: int
    mask: int
    name: str


class Inotify:
    """One non-blocking inotify instance; close it (or use ``with``) when done."""

    def __init__(self) -> None:
        self._ino = inotify_simple.INotify(nonblocking=True)

    def add_watch(self, path: Path, mask: int) -> int:
        """Watch ``path``; returns the watch descriptor. Raises OSError (e.g. path gone)."""
        return int(self._ino.add_watch(str(path), mask))

    def rm_watch(self, wd: int) -> None:
        """Stop a watch; raises OSError when it is already gone."""
        self._ino.rm_watch(wd)

    async def events(self) -> list[InotifyEvent]:
        """Wait for and return the next batch of events.

        Cancellation: nothing is lost; events not yet read stay queued in the kernel.
        """
        while True:
            await trio.lowlevel.wait_readable(self._ino.fileno())
            try:
                raw = self._ino.read(timeout=0)
            except BlockingIOError:
                continue
            if raw:
                return [InotifyEvent(int(e.wd), int(e.mask), str(e.name or "")) for e in raw]

    def close(self) -> None:
        """Release the descriptor (trio is told first, so no task waits on a closed fd)."""
        trio.lowlevel.notify_closing(self._ino.fileno())
        self._ino.close()

    def __enter__(self) -> Inotify:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()
