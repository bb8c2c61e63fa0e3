"""Device metadata files (KEP-5304) on disk: written at prepare, removed at unprepare.

:mod:`dracpu.core.device_metadata` computes the documents; this module writes them where the
kubelet-plugin library of upstream's Go driver does (``EnableDeviceMetadata``): one JSON file per
request under ``<kubelet root>/plugins/dra.cpu/dra-device-metadata/<namespace>_<name>/`` and one
CDI spec per request in the CDI dir, whose device bind-mounts the file read-only into the
container. The spec's CDI device ID is added to the prepared devices of that request, so the
runtime applies it with the claim's own spec.

Writes are atomic (a temp file renamed over the target), like the CPU CDI specs; they are not
fsynced (a crash before the kubelet's answer makes it call prepare again, which rewrites them).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from dracpu.atomic_file import write_atomic
from dracpu.core import device_metadata as dm
from dracpu.errors import DracpuError

__all__ = ["MetadataError", "MetadataWriter"]


class MetadataError(DracpuError):
    """A metadata file or its CDI spec could not be written or removed; names the file."""


def _write_atomic(target: Path, data: bytes) -> None:
    try:
        write_atomic(target, data, tmp_prefix=".meta.")
    except OSError as exc:
        raise MetadataError(f"cannot write device metadata {target}: {exc}") from exc


class MetadataWriter:
    """Writes and removes one driver's metadata files (see the module docstring)."""

    def __init__(self, *, driver: str, plugin_data_dir: Path, cdi_dir: Path) -> None:
        self.driver = driver
        self.plugin_data_dir = plugin_data_dir
        self.cdi_dir = cdi_dir

    def write(
        self,
        *,
        namespace: str,
        name: str,
        uid: str,
        pod_claim_name: str | None,
        devices: Sequence[dm.MetadataDevice],
    ) -> dict[str, str]:
        """Write the files of one claim; returns base request name -> metadata CDI device ID.

        Raises :class:`MetadataError` naming the file. Synchronous (small files).
        """
        files = dm.metadata_files(
            driver=self.driver,
            plugin_data_dir=str(self.plugin_data_dir),
            cdi_dir=str(self.cdi_dir),
            namespace=namespace,
            name=name,
            uid=uid,
            pod_claim_name=pod_claim_name,
            devices=devices,
        )
        ids: dict[str, str] = {}
        for f in files:
            _write_atomic(Path(f.metadata_path), json.dumps(f.metadata_body).encode() + b"\n")
            _write_atomic(Path(f.cdi_path), json.dumps(f.cdi_spec).encode() + b"\n")
            ids[f.request] = f.cdi_device_id
        return ids

    def remove(self, *, namespace: str, name: str, uid: str) -> None:
        """Remove one claim's metadata directories and CDI specs (nothing there is fine).

        The directories are the one named for ``namespace``/``name`` (when both are given) and
        those the claim's own metadata CDI specs mount, so a claim known only by its UID (adopted
        from its CDI spec after a restart) is cleaned up too. A directory whose metadata names
        another claim UID (a newer claim of the same name) is left alone. Raises
        :class:`MetadataError` naming what could not be removed. Synchronous (small files).
        """
        specs = sorted(self.cdi_dir.glob(dm.cdi_spec_glob(self.driver, uid)))
        dirs = {self._dir_of(spec) for spec in specs} - {None}
        named = Path(dm.claim_metadata_dir(str(self.plugin_data_dir), namespace, name))
        # Only a plain directory name of the metadata root (no path tricks in the reference).
        if namespace and name and named.parent == self._root() and ".." not in named.parts:
            dirs.add(named)
        for directory in sorted(d for d in dirs if d is not None):
            if _names_other_claim(directory, uid):
                continue
            try:
                shutil.rmtree(directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise MetadataError(f"cannot remove device metadata {directory}: {exc}") from exc
        for spec in specs:
            try:
                spec.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise MetadataError(f"cannot remove metadata CDI spec {spec}: {exc}") from exc

    def _root(self) -> Path:
        """The directory holding one subdirectory per claim."""
        return Path(dm.claim_metadata_dir(str(self.plugin_data_dir), "x", "x")).parent

    def _dir_of(self, spec: Path) -> Path | None:
        """The claim directory a metadata CDI spec of ours mounts from, or None when the spec
        is unreadable or points anywhere but ``<metadata root>/<dir>/<request>/metadata.json``."""
        try:
            doc = json.loads(spec.read_bytes())
            host_paths = [
                m["hostPath"]
                for d in doc["devices"]
                for m in d["containerEdits"]["mounts"]
                if isinstance(m.get("hostPath"), str)
            ]
        except (OSError, ValueError, TypeError, KeyError):
            return None
        root = self._root()
        for host_path in host_paths:
            path = Path(host_path)
            if ".." in path.parts or path.name != "metadata.json":
                continue
            if path.parent.parent.parent == root:
                return path.parent.parent
        return None


def _names_other_claim(directory: Path, uid: str) -> bool:
    """Whether a metadata file in ``directory`` belongs to a claim other than ``uid``."""
    for meta in directory.glob("*/metadata.json"):
        try:
            body = json.loads(meta.read_bytes())
            owner = body["metadata"]["uid"]
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if owner != uid:
            return True
    return False
