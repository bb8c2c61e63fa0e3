"""One driver's CDI specs in the CDI directory: one file per prepared claim, named by its UID.

:class:`SpecDir` is the file handling both drivers share (``dra.cpu``'s specs in
:mod:`dracpu.cdi`, ``dra.memory``'s in :mod:`dracpu.memory_cdi`); a subclass says what a spec
holds: the file name prefix, the document for a value, and the value its env entries name.
Only files named with the subclass's prefix are touched, so the two drivers (and the CDI
library's own ``spec.*.tmp`` writes) share the directory safely.

Writes are atomic (a ``dracpu-spec.*.tmp`` file in the same directory, renamed over the target:
CDI readers ignore names not ending in ``.json``/``.yaml``). They are not fsynced: the checkpoint
is the truth, and at start the daemon rewrites the specs of every prepared claim and removes the
others (:meth:`SpecDir.reconcile`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from dracpu.atomic_file import write_atomic
from dracpu.errors import DracpuError

__all__ = ["TMP_PREFIX", "CdiError", "Reconciled", "SpecDir", "check_uid"]

V = TypeVar("V")

TMP_PREFIX = "dracpu-spec."
"""Our temp files' prefix: ours alone (the CDI library uses ``spec.``), so a crash's leftovers
can be removed without touching another driver's write in progress."""
_TMP_RE = re.compile(re.escape(TMP_PREFIX) + r"[A-Za-z0-9_]+\.tmp")
# A claim UID becomes part of a CDI device and file name: letters, digits and '-' (UUIDs).
_UID_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,126}[A-Za-z0-9])?")


class CdiError(DracpuError):
    """A CDI spec could not be written, removed or read; the message names the file."""


def check_uid(uid: str) -> str:
    """``uid`` if it can name a CDI device and file; else :class:`CdiError` naming it."""
    if not _UID_RE.fullmatch(uid):
        raise CdiError(f"claim UID {uid!r} cannot name a CDI device (letters, digits, '-')")
    return uid


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What :meth:`SpecDir.reconcile` changed: claim UIDs written and removed, and the names of
    temp files a crashed write had left."""

    written: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    strays: tuple[str, ...] = ()


class SpecDir(Generic[V]):
    """The specs of one driver in the CDI directory (``--cdi-dir``), one per claim UID.

    Subclasses set :attr:`file_prefix` and implement :meth:`document` and :meth:`value_of`.
    A spec holds one device whose container edits are env entries only, so reading one back is
    reading that env.
    """

    file_prefix: str
    """File names are ``<file_prefix><uid>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._file_re = re.compile(
            re.escape(self.file_prefix) + r"(?P<uid>[A-Za-z0-9][A-Za-z0-9._:-]*)\.json"
        )

    def document(self, uid: str, value: V) -> dict[str, Any]:
        """The JSON-ready spec of claim ``uid`` holding ``value``."""
        raise NotImplementedError

    def value_of(self, uid: str, env: tuple[str, ...], origin: str) -> V | None:
        """The value the env entries of claim ``uid``'s spec hold, or None when they are not
        ours. May raise ValueError for a malformed entry."""
        raise NotImplementedError

    def path(self, uid: str) -> Path:
        """Where the spec of claim ``uid`` lives; raises :class:`CdiError` for a bad UID."""
        return self.root / f"{self.file_prefix}{check_uid(uid)}.json"

    def write(self, uid: str, value: V) -> Path:
        """Write (or replace) the spec of claim ``uid`` atomically; returns its path.

        Raises :class:`CdiError` naming the file. Synchronous: not interruptible by cancellation.
        """
        target = self.path(uid)
        data = json.dumps(self.document(uid, value), separators=(",", ":")).encode() + b"\n"
        try:
            write_atomic(target, data, tmp_prefix=TMP_PREFIX)
        except OSError as exc:
            raise CdiError(f"cannot write CDI spec {target}: {exc}") from exc
        return target

    def remove(self, uid: str) -> bool:
        """Remove the spec of claim ``uid``; returns whether it existed. Raises :class:`CdiError`
        naming the file if it exists and cannot be removed."""
        target = self.path(uid)
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise CdiError(f"cannot remove CDI spec {target}: {exc}") from exc
        return True

    def read_all(self) -> dict[str, V | None]:
        """The claims that have a spec here, with the value it holds (None: unreadable or not
        ours). Used to rebuild the state when the checkpoint is lost. Raises :class:`CdiError`
        if the directory exists but cannot be listed."""
        found: dict[str, V | None] = {}
        for name in self._listing():
            m = self._file_re.fullmatch(name)
            if m is not None:
                found[m["uid"]] = self._read(m["uid"])
        return found

    def reconcile(self, prepared: Mapping[str, V]) -> Reconciled:
        """Make the directory hold exactly the specs of ``prepared`` (claim UID -> value):
        rewrite specs that are missing or differ in any byte's meaning, remove ours for other
        claims and our temp files left by a crash mid-write.

        Raises :class:`CdiError` naming the first file that could not be fixed.
        """
        present = self.read_all()
        strays = self._remove_strays()
        removed = []
        for uid in sorted(present):
            if uid not in prepared:
                self.remove(uid)
                removed.append(uid)
        written = []
        for uid, value in sorted(prepared.items()):
            if present.get(uid) != value or not self._is_exact(uid, value):
                self.write(uid, value)
                written.append(uid)
        return Reconciled(written=tuple(written), removed=tuple(removed), strays=strays)

    def _listing(self) -> list[str]:
        try:
            return sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CdiError(f"cannot list CDI dir {self.root}: {exc}") from exc

    def _read(self, uid: str) -> V | None:
        path = self.path(uid)
        try:
            env = json.loads(path.read_bytes())["devices"][0]["containerEdits"]["env"]
            return self.value_of(uid, tuple(e for e in env if isinstance(e, str)), str(path))
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None

    def _remove_strays(self) -> tuple[str, ...]:
        names = [n for n in self._listing() if _TMP_RE.fullmatch(n)]
        for name in names:
            try:
                (self.root / name).unlink(missing_ok=True)
            except OSError as exc:
                raise CdiError(f"cannot remove stray temp file {self.root / name}: {exc}") from exc
        return tuple(names)

    def _is_exact(self, uid: str, value: V) -> bool:
        try:
            return bool(json.loads(self.path(uid).read_bytes()) == self.document(uid, value))
        except (OSError, ValueError):
            return False
