"""The kubelet's pod cgroup tree on disk: where it is, and reading and writing one container.

One boundary module for cgroupfs and ``/proc``. cgroup v1 keeps the cpuset controller in its own
hierarchy (``<mount>/cpuset/kubepods…``); cgroup v2 has one unified tree
(``<mount>/kubepods…``) where the cpuset controller must be enabled for the kubelet's subtree.
Both name the files the same: ``cpuset.cpus`` and ``cgroup.procs``. A hybrid host whose v2 tree
(e.g. ``/sys/fs/cgroup/unified``) lacks the cpuset controller is enforced through v1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dracpu.cgroups.layout import Driver
from dracpu.core.cpuset import CpuSet
from dracpu.errors import CpuSetParseError, DracpuError

__all__ = [
    "CgroupTree",
    "CgroupTreeError",
    "HugetlbTree",
    "detect",
    "detect_hugetlb",
    "read_environ",
]

CPUS = "cpuset.cpus"
MEMS = "cpuset.mems"
PROCS = "cgroup.procs"


class CgroupTreeError(DracpuError):
    """No usable cpuset cgroup tree for the kubelet's pods; names the path looked at."""


@dataclass(frozen=True, slots=True)
class CgroupTree:
    """The kubelet's root cgroup directory (``kubepods`` or ``kubepods.slice``) in a hierarchy
    that has the cpuset controller, with the kubelet's cgroup driver and the cgroup version."""

    root: Path
    driver: Driver
    version: int

    def parts(self, path: Path) -> tuple[str, ...]:
        """``path``'s components below the root."""
        return path.relative_to(self.root).parts

    def read_cpus(self, cgroup: Path) -> CpuSet | None:
        """The cgroup's ``cpuset.cpus``; None when unreadable, empty or unparsable."""
        try:
            text = (cgroup / CPUS).read_text().strip()
            return CpuSet.parse(text, origin=str(cgroup / CPUS)) if text else None
        except (OSError, CpuSetParseError):
            return None

    def write_cpus(self, cgroup: Path, cpus: CpuSet) -> None:
        """Set the cgroup's ``cpuset.cpus``; raises :class:`CgroupTreeError` naming the file."""
        try:
            fd = os.open(cgroup / CPUS, os.O_WRONLY)
            try:
                os.write(fd, str(cpus).encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise CgroupTreeError(f"{cgroup / CPUS}: cannot write {cpus}: {exc}") from exc

    def write_mems(self, cgroup: Path, mems: str) -> None:
        """Set the cgroup's ``cpuset.mems`` (a NUMA node list); raises :class:`CgroupTreeError`
        naming the file."""
        _write(cgroup / MEMS, mems)

    def pids(self, cgroup: Path) -> list[int]:
        """The processes in the cgroup (empty when gone or unreadable)."""
        try:
            return [int(x) for x in (cgroup / PROCS).read_text().split()]
        except (OSError, ValueError):
            return []


def _write(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupTreeError(f"{path}: cannot write {text!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class HugetlbTree:
    """The kubelet's root cgroup directory in a cgroup v2 hierarchy offering ``hugetlb``: the
    unified mount itself, or ``<mount>/unified`` on a hybrid host (where cpuset is v1). A
    container's directory has the same components below it as in the cpuset tree."""

    root: Path

    def write_limit(self, parts: tuple[str, ...], size_name: str, limit: int) -> None:
        """Set ``hugetlb.<size>.max`` of the container at ``parts`` below the root; raises
        :class:`CgroupTreeError` naming the file."""
        _write(self.root.joinpath(*parts) / f"hugetlb.{size_name}.max", str(limit))


def detect_hugetlb(
    mount: Path = Path("/sys/fs/cgroup"),
    driver: Driver = Driver.CGROUPFS,
    kubelet_cgroup_root: str = "/",
) -> HugetlbTree | None:
    """The kubelet's tree in the v2 hierarchy with the hugetlb controller (``mount`` or
    ``mount/unified``), or None when there is none (hugetlb limits then are not enforced by
    the fallback)."""
    name = "kubepods" if driver is Driver.CGROUPFS else "kubepods.slice"
    name = str(Path(kubelet_cgroup_root.strip("/")) / name)
    for base in (mount, mount / "unified"):
        try:
            offered = (base / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "hugetlb" in offered and (base / name).is_dir():
            return HugetlbTree(base / name)
    return None


def read_environ(pid: int, proc: Path = Path("/proc")) -> tuple[str, ...] | None:
    """A process's environment as ``NAME=value`` entries; None when it cannot be read."""
    try:
        data = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    return tuple(e.decode(errors="replace") for e in data.split(b"\0") if e)


def detect(
    mount: Path = Path("/sys/fs/cgroup"),
    driver: Driver = Driver.CGROUPFS,
    kubelet_cgroup_root: str = "/",
) -> CgroupTree:
    """Find the kubelet's cpuset tree under ``mount``: v2 when ``mount`` is a unified hierarchy
    whose root offers the cpuset controller, else v1's ``cpuset`` hierarchy. The kubelet's pods
    live in ``kubepods`` (``kubepods.slice``) below its ``--cgroup-root`` (``/`` by default).

    Raises :class:`CgroupTreeError` when neither has the kubelet's root directory.
    """
    name = "kubepods" if driver is Driver.CGROUPFS else "kubepods.slice"
    name = str(Path(kubelet_cgroup_root.strip("/")) / name)
    controllers = mount / "cgroup.controllers"
    if controllers.exists():
        try:
            offered = controllers.read_text().split()
        except OSError as exc:
            raise CgroupTreeError(f"{controllers}: {exc}") from exc
        if "cpuset" not in offered:
            raise CgroupTreeError(f"{controllers}: the cpuset controller is not available")
        root, version = mount / name, 2
    else:
        root, version = mount / "cpuset" / name, 1
    if not root.is_dir():
        raise CgroupTreeError(f"{root}: no kubelet cgroup tree here (cgroup v{version})")
    return CgroupTree(root=root, driver=driver, version=version)
