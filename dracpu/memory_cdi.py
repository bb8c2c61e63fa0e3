"""CDI specs of ``dra.memory`` claims: one file per prepared claim, in the memory driver's form.

For claim ``<uid>`` the file ``dra.k8s.io-memory_claim-<uid>.json`` holds one device
``claim-<uid>`` of kind ``dra.k8s.io/memory`` whose env is the claim's ``DRAMEMORY_*`` entries
(:func:`dracpu.core.memory_prepare.memory_env`); prepare answers with the CDI device ID
``dra.k8s.io/memory=claim-<uid>``. The CPU driver's specs (``dra.k8s.io-cpu_...``) live in the
same directory and are never touched here.

Writes are atomic (temp file + rename) and not fsynced: the checkpoint is the truth, and at
start the daemon rewrites the specs of every prepared claim and removes the others
(:meth:`MemoryCdiDir.reconcile`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dracpu.atomic_file import write_atomic
from dracpu.cdi import CdiError
from dracpu.core.cdi import CDI_SPEC_VERSION
from dracpu.core.memory_prepare import CDI_CLASS, CDI_KIND, CDI_VENDOR, cdi_device_name

__all__ = ["MemoryCdiDir", "MemoryReconciled", "memory_spec_document"]

_FILE_PREFIX = f"{CDI_VENDOR}-{CDI_CLASS}_claim-"
_FILE_RE = re.compile(re.escape(_FILE_PREFIX) + r"(?P<uid>[A-Za-z0-9][A-Za-z0-9._:-]*)\.json")
_UID_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,126}[A-Za-z0-9])?")


def memory_spec_document(uid: str, env: Sequence[str]) -> dict[str, Any]:
    """The JSON-ready CDI spec of one prepared ``dra.memory`` claim."""
    return {
        "cdiVersion": CDI_SPEC_VERSION,
        "kind": CDI_KIND,
        "devices": [{"name": cdi_device_name(uid), "containerEdits": {"env": list(env)}}],
    }


@dataclass(frozen=True, slots=True)
class MemoryReconciled:
    """What :meth:`MemoryCdiDir.reconcile` changed."""

    written: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


class MemoryCdiDir:
    """The memory specs in the CDI directory (``--cdi-dir``); only our file names are touched."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, uid: str) -> Path:
        """Where the spec of claim ``uid`` lives; raises :class:`CdiError` for a bad UID."""
        if not _UID_RE.fullmatch(uid):
            raise CdiError(f"claim UID {uid!r} cannot name a CDI device (letters, digits, '-')")
        return self.root / f"{_FILE_PREFIX}{uid}.json"

    def write(self, uid: str, env: Sequence[str]) -> Path:
        """Write (or replace) the spec of claim ``uid`` atomically; raises :class:`CdiError`
        naming the file. Synchronous: not interruptible by cancellation."""
        target = self.path(uid)
        doc = memory_spec_document(uid, env)
        data = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        try:
            write_atomic(target, data, tmp_prefix="dracpu-spec.")
        except OSError as exc:
            raise CdiError(f"cannot write CDI spec {target}: {exc}") from exc
        return target

    def remove(self, uid: str) -> bool:
        """Remove the spec of claim ``uid``; whether it existed. Raises :class:`CdiError`."""
        target = self.path(uid)
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise CdiError(f"cannot remove CDI spec {target}: {exc}") from exc
        return True

    def read_all(self) -> dict[str, tuple[str, ...] | None]:
        """Claim UID → the env its spec holds (None: unreadable). Raises :class:`CdiError`
        if the directory exists but cannot be listed."""
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CdiError(f"cannot list CDI dir {self.root}: {exc}") from exc
        found: dict[str, tuple[str, ...] | None] = {}
        for name in names:
            m = _FILE_RE.fullmatch(name)
            if m is None:
                continue
            try:
                doc = json.loads((self.root / name).read_bytes())
                env = doc["devices"][0]["containerEdits"]["env"]
                found[m["uid"]] = tuple(e for e in env if isinstance(e, str))
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                found[m["uid"]] = None
        return found

    def reconcile(self, prepared: Mapping[str, Sequence[str]]) -> MemoryReconciled:
        """Make the directory hold exactly the memory specs of ``prepared`` (UID → env).

        Raises :class:`CdiError` naming the first file that could not be fixed.
        """
        present = self.read_all()
        removed = []
        for uid in sorted(present):
            if uid not in prepared:
                self.remove(uid)
                removed.append(uid)
        written = []
        for uid, env in sorted(prepared.items()):
            if present.get(uid) != tuple(env):
                self.write(uid, env)
                written.append(uid)
        return MemoryReconciled(written=tuple(written), removed=tuple(removed))
