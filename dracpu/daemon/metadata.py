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
        """Remove one claim's metadata directory and CDI specs (nothing there is fine).

        Raises :class:`MetadataError` naming what could not be removed.
        """
        directory = Path(dm.claim_metadata_dir(str(self.plugin_data_dir), namespace, name))
        try:
            shutil.rmtree(directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise MetadataError(f"cannot remove device metadata {directory}: {exc}") from exc
        for spec in self.cdi_dir.glob(dm.cdi_spec_glob(self.driver, uid)):
            try:
                spec.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise MetadataError(f"cannot remove metadata CDI spec {spec}: {exc}") from exc
