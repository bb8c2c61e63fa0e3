"""``dracpu gather``: one archive for a bug report (upstream's ``dracpu gatherinfo`` counterpart).

The archive (``dracpu-gather-<node>-<UTC time>.tar.gz``) holds, each as its own file:

- ``versions.json``: dracpu, Python, key libraries, kernel;
- ``topology.yaml``: the topology read from ``--sysfs-root`` (as ``dracpu inspect topology``);
- ``config.yaml``: the ``--config`` file as given (secrets redacted);
- ``state/``: every file of the state dir (checkpoint, kept-aside bad checkpoints), redacted;
- ``cdi/``: the CDI specs dracpu wrote (``dra.k8s.io-cpu_*`` and ``dra.k8s.io-memory_*``);
- ``status.json``, ``metrics.txt``, ``logs.txt``: from the running daemon's endpoint, when up;
- ``slices.json``: this node's published ResourceSlices, when an API config is given;
- ``errors.txt``: every part that could not be collected, and why (a missing part never fails
  the whole gather).

**Secrets are never included.** Nothing is read from kubeconfig files or service-account
directories, and every JSON/YAML document and text line passes :func:`redact`, which blanks the
values of keys that name credentials (``token``, ``password``, ``client-key-data``, ...) and
bearer tokens in text. A test builds a state dir and config holding a token and checks the
archive does not contain it.
"""

from __future__ import annotations

import io
import json
import platform
import re
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

__all__ = ["GatherSources", "gather", "redact"]

_SECRET_KEY = re.compile(
    r"(token|password|passwd|secret|credential|private|client-key|key-data|"
    r"certificate-data|authorization|bearer)",
    re.IGNORECASE,
)
_SECRET_TEXT = re.compile(r"(?i)(bearer\s+|token[\"']?\s*[:=]\s*[\"']?)([A-Za-z0-9._~+/=-]{8,})")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
REDACTED = "<redacted>"
_LIBRARIES = ("trio", "trio-asyncio", "grpclib", "betterproto2", "httpx", "hypercorn")
_MAX_FILE = 8 << 20
"""Bigger files are cut: an archive for a bug report must stay small enough to attach."""


def redact(value: Any) -> Any:
    """``value`` with credential-like keys blanked and token-like strings replaced."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        text = _PEM.sub(REDACTED, value)
        text = _JWT.sub(REDACTED, text)
        return _SECRET_TEXT.sub(lambda m: m.group(1) + REDACTED, text)
    return value


def _redact_document(raw: bytes, name: str) -> bytes:
    """Redact a JSON or YAML file structurally when it parses, else line by line as text."""
    text = raw.decode("utf-8", "replace")
    try:
        if name.endswith(".json"):
            return json.dumps(redact(json.loads(text)), indent=2).encode()
        if name.endswith((".yaml", ".yml")):
            return yaml.safe_dump(redact(yaml.safe_load(text)), sort_keys=False).encode()
    except (ValueError, yaml.YAMLError):
        pass
    return str(redact(text)).encode()


@dataclass(frozen=True, slots=True)
class GatherSources:
    """Where each part comes from; a None or missing source is noted in ``errors.txt``."""

    node_name: str
    sysfs_root: Path = Path("/sys")
    state_dir: Path | None = None
    cdi_dir: Path | None = None
    config_file: Path | None = None
    fetch_endpoint: Callable[[str], bytes] | None = None
    """GET a path (``/status``) of the running daemon's endpoint; raises when it is down."""
    list_slices: Callable[[], list[dict[str, Any]]] | None = None
    """This node's ResourceSlices from the API server; raises when unreachable."""
    extra: dict[str, bytes] = field(default_factory=dict)


class _Archive:
    def __init__(self, tar: tarfile.TarFile, prefix: str) -> None:
        self._tar = tar
        self._prefix = prefix
        self.errors: list[str] = []

    def add(self, name: str, data: bytes) -> None:
        if len(data) > _MAX_FILE:
            data = data[:_MAX_FILE] + b"\n<cut: file larger than 8 MiB>\n"
        info = tarfile.TarInfo(f"{self._prefix}/{name}")
        info.size = len(data)
        info.mtime = int(time.time())
        info.mode = 0o600
        self._tar.addfile(info, io.BytesIO(data))

    def part(self, name: str, produce: Callable[[], bytes]) -> None:
        try:
            self.add(name, produce())
        except Exception as exc:  # each part is best effort; say why it is missing
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")


def _versions() -> bytes:
    libs: dict[str, str] = {}
    for lib in ("dracpu", *_LIBRARIES):
        try:
            libs[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            libs[lib] = "not installed"
    doc = {
        "packages": libs,
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "machine": platform.machine(),
    }
    return json.dumps(doc, indent=2).encode()


def _topology(root: Path) -> bytes:
    from dracpu.cli import topology_document  # the same document `dracpu inspect topology` prints
    from dracpu.sysfs import read_topology

    doc = topology_document(read_topology(root))
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100).encode()


def _files(directory: Path, patterns: Iterable[str]) -> list[Path]:
    found: set[Path] = set()
    for pattern in patterns:
        found.update(p for p in directory.glob(pattern) if p.is_file() and not p.is_symlink())
    return sorted(found)


def gather(sources: GatherSources, out_dir: Path) -> Path:
    """Write the archive into ``out_dir`` and return its path; never raises for a missing part."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    prefix = f"dracpu-gather-{sources.node_name}-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{prefix}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        archive = _Archive(tar, prefix)
        archive.part("versions.json", _versions)
        archive.part("topology.yaml", lambda: _topology(sources.sysfs_root))
        config_file = sources.config_file
        if config_file is not None:
            archive.part(
                "config.yaml", lambda: _redact_document(config_file.read_bytes(), "config.yaml")
            )
        for label, directory, patterns in (
            ("state", sources.state_dir, ("*",)),
            ("cdi", sources.cdi_dir, ("dra.k8s.io-cpu_*", "dra.k8s.io-memory_*")),
        ):
            if directory is None:
                archive.errors.append(f"{label}/: no directory given")
                continue
            if not directory.is_dir():
                archive.errors.append(f"{label}/: {directory} is not a directory")
                continue
            for file in _files(directory, patterns):
                archive.part(
                    f"{label}/{file.name}",
                    lambda f=file: _redact_document(f.read_bytes(), f.name),  # type: ignore[misc]
                )
        fetch = sources.fetch_endpoint
        if fetch is None:
            archive.errors.append("status.json, metrics.txt, logs.txt: no endpoint given")
        else:
            archive.part("status.json", lambda: _redact_document(fetch("/status"), "x.json"))
            archive.part("metrics.txt", lambda: fetch("/metrics"))
            archive.part("logs.txt", lambda: str(redact(fetch("/logs").decode())).encode())
        list_slices = sources.list_slices
        if list_slices is None:
            archive.errors.append("slices.json: no API server config given")
        else:
            archive.part(
                "slices.json", lambda: json.dumps(redact(list_slices()), indent=2).encode()
            )
        for name, data in sources.extra.items():
            archive.add(name, data)
        archive.add("errors.txt", "".join(f"{e}\n" for e in archive.errors).encode())
    path.chmod(0o600)
    return path
