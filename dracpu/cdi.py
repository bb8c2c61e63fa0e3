"""CDI specs: one file per prepared claim, in the upstream ``dra.cpu`` driver's format.

Upstream (``pkg/driver/cdi.go``) writes, for claim UID ``<uid>`` holding CPUs ``<cpus>``, the
file ``dra.k8s.io-cpu_claim-<uid>.json`` (the CDI library's transient spec name) containing::

    {"cdiVersion": "0.8.0", "kind": "dra.k8s.io/cpu",
     "devices": [{"name": "claim-<uid>",
                  "containerEdits": {"env": ["DRA_CPUSET_<uid>=<cpus>"]}}]}

and answers prepare with the CDI device ID ``dra.k8s.io/cpu=claim-<uid>``. dracpu writes the same
bytes' meaning under the same name, so a node can switch drivers with its claims in place.

Writes are atomic (a ``dracpu-spec.*.tmp`` file in the same directory, renamed over the target:
CDI readers ignore names not ending in ``.json``/``.yaml``; the prefix is ours alone, unlike the
CDI library's ``spec.*.tmp``, so a temp file left by a crash can be removed without touching
another driver's write in progress). They are not fsynced: the checkpoint is
the truth, and at start the daemon rewrites the specs of every prepared claim and removes the
others (:meth:`CdiDir.reconcile`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dracpu.atomic_file import write_atomic
from dracpu.core.cdi import (
    CDI_CLASS,
    CDI_VENDOR,
    CpusetEnvError,
    cdi_device_id,
    cdi_spec,
    cdi_spec_file_name,
    parse_env,
)
from dracpu.core.cpuset import CpuSet
from dracpu.errors import DracpuError

__all__ = ["CdiDir", "CdiError", "Reconciled", "device_id", "spec_document", "spec_file_name"]

_FILE_PREFIX = f"{CDI_VENDOR}-{CDI_CLASS}_claim-"
_FILE_RE = re.compile(re.escape(_FILE_PREFIX) + r"(?P<uid>[A-Za-z0-9][A-Za-z0-9._:-]*)\.json")
# A claim UID becomes part of a CDI device and file name: letters, digits and '-' (UUIDs).
_TMP_PREFIX = "dracpu-spec."
_TMP_RE = re.compile(re.escape(_TMP_PREFIX) + r"[A-Za-z0-9_]+\.tmp")
_UID_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,126}[A-Za-z0-9])?")


class CdiError(DracpuError):
    """A CDI spec could not be written, removed or read; the message names the file."""


def _check_uid(uid: str) -> str:
    if not _UID_RE.fullmatch(uid):
        raise CdiError(f"claim UID {uid!r} cannot name a CDI device (letters, digits, '-')")
    return uid


def device_id(uid: str) -> str:
    """The fully qualified CDI device ID returned to the kubelet (UID checked)."""
    return cdi_device_id(_check_uid(uid))


def spec_file_name(uid: str) -> str:
    """The spec's file name (CDI's transient name for vendor, class and device; UID checked)."""
    return cdi_spec_file_name(_check_uid(uid))


def spec_document(uid: str, cpus: CpuSet) -> dict[str, Any]:
    """The CDI spec of one claim, as JSON-ready data (UID checked)."""
    return cdi_spec(_check_uid(uid), cpus)


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What :meth:`CdiDir.reconcile` changed: claim UIDs written and removed, and the names of
    temp files a crashed write had left."""

    written: tuple[str, ...]
    removed: tuple[str, ...]
    strays: tuple[str, ...] = ()


class CdiDir:
    """The CDI spec directory (``--cdi-dir``); only files named like ours are touched."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, uid: str) -> Path:
        """Where the spec of claim ``uid`` lives."""
        return self.root / spec_file_name(uid)

    def write(self, uid: str, cpus: CpuSet) -> Path:
        """Write (or replace) the spec of claim ``uid`` atomically; returns its path.

        Raises :class:`CdiError` naming the file. Synchronous: not interruptible by cancellation.
        """
        target = self.path(uid)
        data = json.dumps(spec_document(uid, cpus), separators=(",", ":")).encode() + b"\n"
        try:
            write_atomic(target, data, tmp_prefix=_TMP_PREFIX)
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

    def read_all(self) -> dict[str, CpuSet | None]:
        """The claims that have a spec here, with the CPUs it names (None: unreadable/foreign).

        Used to rebuild the state when the checkpoint is lost. Raises :class:`CdiError` if the
        directory exists but cannot be listed.
        """
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CdiError(f"cannot list CDI dir {self.root}: {exc}") from exc
        found: dict[str, CpuSet | None] = {}
        for name in names:
            m = _FILE_RE.fullmatch(name)
            if m is not None:
                found[m["uid"]] = self._cpus_of(m["uid"])
        return found

    def _cpus_of(self, uid: str) -> CpuSet | None:
        path = self.path(uid)
        try:
            env = json.loads(path.read_bytes())["devices"][0]["containerEdits"]["env"]
            return parse_env([e for e in env if isinstance(e, str)], origin=str(path)).get(uid)
        except (OSError, ValueError, KeyError, IndexError, TypeError, CpusetEnvError):
            return None

    def reconcile(self, prepared: Mapping[str, CpuSet]) -> Reconciled:
        """Make the directory hold exactly the specs of ``prepared`` (claim UID -> CPUs):
        rewrite specs that are missing or differ, remove ours for other claims and our temp
        files left by a crash mid-write.

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
        for uid, cpus in sorted(prepared.items()):
            if present.get(uid) != cpus or not self._is_exact(uid, cpus):
                self.write(uid, cpus)
                written.append(uid)
        return Reconciled(written=tuple(written), removed=tuple(removed), strays=strays)

    def _remove_strays(self) -> tuple[str, ...]:
        try:
            names = sorted(n for n in os.listdir(self.root) if _TMP_RE.fullmatch(n))
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise CdiError(f"cannot list CDI dir {self.root}: {exc}") from exc
        for name in names:
            try:
                (self.root / name).unlink(missing_ok=True)
            except OSError as exc:
                raise CdiError(f"cannot remove stray temp file {self.root / name}: {exc}") from exc
        return tuple(names)

    def _is_exact(self, uid: str, cpus: CpuSet) -> bool:
        try:
            return bool(json.loads(self.path(uid).read_bytes()) == spec_document(uid, cpus))
        except (OSError, ValueError):
            return False
