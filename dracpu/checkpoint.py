"""The node's checkpoint: one versioned, checksummed JSON file under ``--state-dir``.

The checkpoint is the truth about which claim holds which CPUs; the CDI specs are derived from it.
It is written ahead of every other effect (write-ahead), durably: the new content goes to a temp
file in the same directory, which is fsynced, renamed over the old file, and then the directory
is fsynced so the rename itself survives a power cut. A reader therefore sees the old file or the
new one, never a mix.

On disk::

    {"format": "dracpu-checkpoint", "version": 1, "sha256": "<hex>", "body": {...}}

``sha256`` covers the canonical form of ``body`` (keys sorted, no spaces, UTF-8). The body is
plain JSON of the node state; its shape belongs to whoever serializes the state.

Loading distinguishes three outcomes: no file (a first start), a good file, and a bad one
(unreadable, not JSON, wrong checksum, missing fields). A bad file is renamed aside
(``checkpoint.json.corrupt-<n>``) so nothing is lost and the next start does not trip on it
again; the caller rebuilds the state from other sources. A file written by a *newer* dracpu
(a higher ``version``) is not touched: :class:`CheckpointVersionError` is raised, because an
older binary cannot know what that file promises.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dracpu.errors import DracpuError

__all__ = [
    "CHECKPOINT_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointStore",
    "CheckpointVersionError",
    "Loaded",
    "canonical_json",
    "decode",
    "encode",
    "encode_canonical",
]

FORMAT = "dracpu-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.json"


class CheckpointError(DracpuError):
    """The checkpoint file is unusable; ``path`` names it."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(f"checkpoint {path}: {message}")


class CheckpointVersionError(CheckpointError):
    """The checkpoint was written by a newer dracpu (format ``version`` above ours)."""


def canonical_json(body: Any) -> bytes:
    """The bytes the checksum covers: sorted keys, no whitespace, UTF-8."""
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def encode(body: Mapping[str, Any]) -> bytes:
    """The file content for ``body`` (a JSON object)."""
    return encode_canonical(canonical_json(body))


def encode_canonical(body_json: bytes) -> bytes:
    """The file content for a body given as ``canonical_json(body)``: the same bytes as
    ``encode(body)`` (the document is canonical JSON too), with the body serialized once.

    ``"body"`` sorts before the document's other keys, so the body's bytes go first as they are.
    """
    digest = hashlib.sha256(body_json).hexdigest()
    rest = canonical_json({"format": FORMAT, "version": FORMAT_VERSION, "sha256": digest})
    return b'{"body":' + body_json + b"," + rest[1:] + b"\n"


def decode(data: bytes, *, path: str) -> dict[str, Any]:
    """The body of a checkpoint file; raises :class:`CheckpointVersionError` for a newer
    format and :class:`CheckpointError` for anything else wrong, naming what."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"not JSON ({exc})", path=path) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"not a {FORMAT} file", path=path)
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"bad format version {version!r}", path=path)
    if version > FORMAT_VERSION:
        raise CheckpointVersionError(
            f"format version {version} was written by a newer dracpu (this one reads up to "
            f"{FORMAT_VERSION}); refusing to start rather than lose what it records",
            path=path,
        )
    body = doc.get("body")
    if not isinstance(body, dict):
        raise CheckpointError("no body object", path=path)
    want = doc.get("sha256")
    got = hashlib.sha256(canonical_json(body)).hexdigest()
    if want != got:
        raise CheckpointError(f"checksum mismatch (file says {want!r}, body is {got})", path=path)
    return body


@dataclass(frozen=True, slots=True)
class Loaded:
    """What :meth:`CheckpointStore.load` found.

    ``status``: "absent" (first start), "loaded" (``body`` set) or "corrupt" (the bad file was
    moved to ``kept_aside``; ``reason`` says what was wrong).
    """

    status: Literal["absent", "loaded", "corrupt"]
    body: dict[str, Any] | None = None
    reason: str = ""
    kept_aside: Path | None = None


class CheckpointStore:
    """Reads and durably writes ``<state_dir>/checkpoint.json``.

    ``durable=False`` skips the fsyncs (tests and benchmarks of everything but the disk); the
    rename stays, so readers still never see a torn file. Writes are synchronous on purpose: the
    owner task runs them between reading the state and replying, and a blocking call cannot be
    interrupted half-way by a trio cancellation.
    """

    def __init__(self, state_dir: Path, *, durable: bool = True) -> None:
        self.state_dir = state_dir
        self.path = state_dir / CHECKPOINT_FILE
        self.durable = durable
        self.writes = 0

    def secure_dir(self) -> None:
        """Create the state dir (mode 0700), or tighten an existing one to 0700: it holds the
        node's CPU assignments and the status socket, for root alone. A dir already 0700 is
        left untouched (so a read-only one still works for loading).

        Raises :class:`CheckpointError` naming the dir if it cannot be created or tightened.
        """
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.state_dir.stat().st_mode & 0o777 != 0o700:
                os.chmod(self.state_dir, 0o700)
        except OSError as exc:
            raise CheckpointError(
                f"cannot make the state dir {self.state_dir} private (0700): {exc}",
                path=str(self.path),
            ) from exc

    def load(self) -> Loaded:
        """Load the checkpoint; see :class:`Loaded`. Raises :class:`CheckpointVersionError` for a
        newer format, and :class:`CheckpointError` if the state dir itself is unusable."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Loaded("absent")
        except IsADirectoryError as exc:
            reason = f"checkpoint {self.path}: is a directory ({exc})"
            return Loaded("corrupt", reason=reason, kept_aside=self.keep_aside())
        except OSError as exc:
            reason = f"checkpoint {self.path}: unreadable ({exc})"
            return Loaded("corrupt", reason=reason, kept_aside=self.keep_aside())
        try:
            body = decode(data, path=str(self.path))
        except CheckpointVersionError:
            raise
        except CheckpointError as exc:
            aside = self.keep_aside()
            return Loaded("corrupt", reason=str(exc), kept_aside=aside)
        return Loaded("loaded", body=body)

    def keep_aside(self) -> Path:
        """Rename the checkpoint to ``checkpoint.json.corrupt-<n>`` (first free n); its path."""
        n = 0
        while True:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{n}")
            if not aside.exists():
                break
            n += 1
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            raise CheckpointError(
                f"cannot move the bad checkpoint aside to {aside}: {exc}", path=str(self.path)
            ) from exc
        self._sync_dir()
        return aside

    def write(self, body: Mapping[str, Any]) -> None:
        """Replace the checkpoint with ``body``, durably (see the module docstring).

        Raises :class:`CheckpointError` if the state dir cannot be written; the old file is
        then still intact. Synchronous: not interruptible by cancellation.
        """
        self.write_canonical(canonical_json(body))

    def write_canonical(self, body_json: bytes) -> None:
        """:meth:`write` for a body already given as ``canonical_json(body)`` (the daemon's
        owner keeps each claim's serialized form; see ``dracpu.daemon.snapshot_json``)."""
        data = encode_canonical(body_json)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            # A temp file left by a crash may have another mode (O_CREAT keeps an existing
            # file's): start from a fresh one, so the checkpoint is always 0600.
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.durable:
                    os.fdatasync(fd)  # Data and size; the rename + dir fsync do the rest.
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            self._sync_dir()
        except OSError as exc:
            # Free what a half-written temp file holds (a full disk stays no fuller).
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise CheckpointError(f"cannot write: {exc}", path=str(self.path)) from exc
        self.writes += 1

    def _sync_dir(self) -> None:
        if not self.durable:
            return
        fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
