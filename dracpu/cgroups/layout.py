"""Where the kubelet puts pods and containers in the cgroup tree, and how to tell them apart.

Both kubelet cgroup drivers are understood, below the kubelet's root (``kubepods``):

- **cgroupfs**: ``kubepods[/burstable|/besteffort]/pod<uid>/<container-id>``;
- **systemd**: ``kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_>.slice/``
  ``<runtime>-<container-id>.scope`` where ``uid_`` is the pod UID with ``-`` written as ``_``
  and ``<runtime>`` is ``cri-containerd``, ``crio`` or ``docker``.

:func:`identify` is pure (paths in, names out). The pod's sandbox (pause) container has a
container cgroup too; the policy sees it as one more claim-less container.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["CgroupContainer", "Driver", "identify", "is_pod_dir", "is_qos_dir"]


class Driver(enum.StrEnum):
    """The kubelet's ``--cgroup-driver``."""

    CGROUPFS = "cgroupfs"
    SYSTEMD = "systemd"


@dataclass(frozen=True, slots=True)
class CgroupContainer:
    """A container cgroup: its pod's UID and the runtime's container ID."""

    pod_uid: str
    container_id: str


_UID = r"[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}"
_CGROUPFS_POD = re.compile(rf"^pod({_UID}|[A-Za-z0-9-]+)$")
_SYSTEMD_POD = re.compile(rf"^kubepods(?:-[a-z]+)?-pod({_UID}|[A-Za-z0-9_]+)\.slice$")
_CGROUPFS_QOS = {"burstable", "besteffort"}
_SYSTEMD_QOS = re.compile(r"^kubepods-[a-z]+\.slice$")
_SCOPE = re.compile(r"^(?:cri-containerd|crio|docker)-([0-9a-zA-Z]+)\.scope$")
_CONTAINER_ID = re.compile(r"^[0-9a-zA-Z][0-9a-zA-Z_.-]*$")


def is_qos_dir(name: str, driver: Driver) -> bool:
    """True for the burstable / besteffort level below the root."""
    if driver is Driver.CGROUPFS:
        return name in _CGROUPFS_QOS
    return bool(_SYSTEMD_QOS.match(name))


def is_pod_dir(name: str, driver: Driver) -> str | None:
    """The pod UID when ``name`` is a pod cgroup directory, else None."""
    pattern = _CGROUPFS_POD if driver is Driver.CGROUPFS else _SYSTEMD_POD
    match = pattern.match(name)
    if match is None:
        return None
    uid = match.group(1)
    return uid.replace("_", "-") if driver is Driver.SYSTEMD else uid


def identify(parts: tuple[str, ...], driver: Driver) -> CgroupContainer | None:
    """The container a cgroup path names, ``parts`` being its components below the kubelet's
    root (e.g. ``("burstable", "pod<uid>", "<id>")``); None for anything else."""
    if len(parts) == 3 and is_qos_dir(parts[0], driver):
        parts = parts[1:]
    if len(parts) != 2:
        return None
    uid = is_pod_dir(parts[0], driver)
    if uid is None:
        return None
    if driver is Driver.SYSTEMD:
        scope = _SCOPE.match(parts[1])
        return CgroupContainer(uid, scope.group(1)) if scope else None
    if not _CONTAINER_ID.match(parts[1]):
        return None
    return CgroupContainer(uid, parts[1])
