"""The cgroup fallback: enforce the pinning policy through cgroupfs when NRI is unavailable."""

from dracpu.cgroups.fallback import CgroupEnforcer, Pinned
from dracpu.cgroups.layout import CgroupContainer, Driver, identify
from dracpu.cgroups.tree import (
    CgroupTree,
    CgroupTreeError,
    HugetlbTree,
    detect,
    detect_hugetlb,
    read_environ,
)

__all__ = [
    "CgroupContainer",
    "CgroupEnforcer",
    "CgroupTree",
    "CgroupTreeError",
    "Driver",
    "HugetlbTree",
    "Pinned",
    "detect",
    "detect_hugetlb",
    "identify",
    "read_environ",
]
