"""DRA device metadata (KEP-5304): what a container can read about the devices of its claim.

The Kubernetes kubelet-plugin library (``k8s.io/dynamic-resource-allocation/kubeletplugin``,
``EnableDeviceMetadata``) gives each prepared request one JSON file and one CDI spec that
bind-mounts it read-only into the container; upstream dra-driver-cpu turns it on with the
``metadata.resource.k8s.io/v1beta1`` version and adds ``dra.cpu/allocatedNumCPUs``. dracpu
writes the same files under the same names, so a workload that reads
``/var/run/kubernetes.io/dra-device-attributes/resourceclaims/<claim>/<request>/dra.cpu-metadata.json``
(or ``resourceclaimtemplates/<pod claim name>/...`` for claims made from a template) works with
either driver. Only runtime CDI support is needed; no API server feature gate is involved.

Pure: this module computes paths, documents and the CDI spec; the shell writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ALLOCATED_NUM_CPUS",
    "METADATA_API_VERSION",
    "POD_CLAIM_NAME_ANNOTATION",
    "MetadataDevice",
    "MetadataFiles",
    "cdi_spec_glob",
    "claim_metadata_dir",
    "metadata_files",
]

METADATA_API_VERSION = "metadata.resource.k8s.io/v1beta1"
CONTAINER_DIR = "/var/run/kubernetes.io/dra-device-attributes"
METADATA_SUBDIR = "dra-device-metadata"
POD_CLAIM_NAME_ANNOTATION = "resource.kubernetes.io/pod-claim-name"
ALLOCATED_NUM_CPUS = "dra.cpu/allocatedNumCPUs"
CDI_MOUNT_VERSION = "0.5.0"
"""CDI spec version of the metadata spec: ``mounts`` need 0.3.0, and a device name starting with
a digit (``<claim uid>_<request>``, when the UID does) needs 0.5.0; containerd's CDI cache refuses
the whole spec otherwise ("the spec version must be at least v0.5.0"), failing CreateContainer."""


@dataclass(frozen=True, slots=True)
class MetadataDevice:
    """One prepared device: where it came from, its published attributes, its CPU count."""

    request: str
    pool: str
    device: str
    attributes: Mapping[str, Mapping[str, Any]]
    allocated_cpus: int | None = None


@dataclass(frozen=True, slots=True)
class MetadataFiles:
    """The files of one request: the metadata file, its CDI spec and the CDI device ID."""

    request: str
    metadata_path: str
    metadata_body: dict[str, Any]
    cdi_path: str
    cdi_spec: dict[str, Any]
    cdi_device_id: str


def _base_request(request: str) -> str:
    return request.split("/", 1)[0]


def metadata_files(
    *,
    driver: str,
    plugin_data_dir: str,
    cdi_dir: str,
    namespace: str,
    name: str,
    uid: str,
    pod_claim_name: str | None,
    devices: Sequence[MetadataDevice],
    generation: int = 1,
) -> list[MetadataFiles]:
    """One :class:`MetadataFiles` per base request of ``devices``, in request order.

    ``plugin_data_dir`` is the kubelet's ``plugins/<driver>`` directory; ``pod_claim_name`` is the
    claim's ``resource.kubernetes.io/pod-claim-name`` annotation (set for template claims).
    """
    by_request: dict[str, list[MetadataDevice]] = {}
    for dev in devices:
        by_request.setdefault(_base_request(dev.request), []).append(dev)
    out: list[MetadataFiles] = []
    claim_dir = claim_metadata_dir(plugin_data_dir, namespace, name)
    for base, devs in by_request.items():
        entries = []
        for dev in devs:
            attributes = {k: dict(v) for k, v in dev.attributes.items()}
            if dev.allocated_cpus is not None:
                attributes[ALLOCATED_NUM_CPUS] = {"int": dev.allocated_cpus}
            entry: dict[str, Any] = {"driver": driver, "pool": dev.pool, "name": dev.device}
            if attributes:
                entry["attributes"] = attributes
            entries.append(entry)
        body: dict[str, Any] = {
            "kind": "DeviceMetadata",
            "apiVersion": METADATA_API_VERSION,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "generation": generation,
            },
            "requests": [{"name": devs[0].request if len(devs) == 1 else base, "devices": entries}],
        }
        if pod_claim_name:
            body["podClaimName"] = pod_claim_name
            container_path = f"{CONTAINER_DIR}/resourceclaimtemplates/{pod_claim_name}"
        else:
            container_path = f"{CONTAINER_DIR}/resourceclaims/{name}"
        container_path += f"/{base}/{driver}-metadata.json"
        host_path = f"{claim_dir}/{base}/metadata.json"
        device_name = f"{uid}_{base}"
        spec = {
            "cdiVersion": CDI_MOUNT_VERSION,
            "kind": f"{driver}/metadata",
            "devices": [
                {
                    "name": device_name,
                    "containerEdits": {
                        "mounts": [
                            {
                                "hostPath": host_path,
                                "containerPath": container_path,
                                "options": ["ro", "bind"],
                            }
                        ]
                    },
                }
            ],
        }
        out.append(
            MetadataFiles(
                request=base,
                metadata_path=host_path,
                metadata_body=body,
                cdi_path=f"{cdi_dir.rstrip('/')}/{driver}_metadata_{uid}_{base}.json",
                cdi_spec=spec,
                cdi_device_id=f"{driver}/metadata={device_name}",
            )
        )
    return out


def claim_metadata_dir(plugin_data_dir: str, namespace: str, name: str) -> str:
    """The directory holding every metadata file of one claim (removed at unprepare)."""
    return f"{plugin_data_dir.rstrip('/')}/{METADATA_SUBDIR}/{namespace}_{name}"


def cdi_spec_glob(driver: str, uid: str) -> str:
    """The file-name pattern of one claim's metadata CDI specs in the CDI dir."""
    return f"{driver}_metadata_{uid}_*.json"
