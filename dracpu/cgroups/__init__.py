"""The cgroup fallback: enforce the pinning policy through cgroupfs when NRI is unavailable."""

from dracpu.cgroups.fallback import CgroupEnforcer, Pinned
from dracpu.cgroups.layout import CgroupContainer, Driver, identify
from dracpu.cgroups.tree import CgroupTree, CgroupTreeError, detect, read_environ

__all__ = [
    "CgroupContainer",
    "CgroupEnforcer",
    "CgroupTree",
    "CgroupTreeError",
    "Driver",
    "Pinned",
    "detect",
    "identify",
    "read_environ",
]
