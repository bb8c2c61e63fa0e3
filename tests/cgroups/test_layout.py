"""Container cgroups in the kubelet's cgroupfs and systemd layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from dracpu.cgroups import CgroupTree, CgroupTreeError, detect
from dracpu.cgroups.layout import CgroupContainer, Driver, identify

UID = "0b7d7a5e-3c2f-4b8e-9f0a-1d2c3b4a5f6e"
SYSTEMD_UID = UID.replace("-", "_")
CID = "4f1c2d3e5a6b7c8d9e0f4f1c2d3e5a6b7c8d9e0f4f1c2d3e5a6b7c8d9e0f1234"


@pytest.mark.parametrize(
    ("parts", "driver", "expected"),
    [
        ((f"pod{UID}", CID), Driver.CGROUPFS, CgroupContainer(UID, CID)),
        (("burstable", f"pod{UID}", CID), Driver.CGROUPFS, CgroupContainer(UID, CID)),
        (("besteffort", f"pod{UID}", CID), Driver.CGROUPFS, CgroupContainer(UID, CID)),
        (("burstable", f"pod{UID}"), Driver.CGROUPFS, None),
        (("guaranteed", f"pod{UID}", CID), Driver.CGROUPFS, None),
        (("burstable", "notapod", CID), Driver.CGROUPFS, None),
        ((f"pod{UID}", CID, "extra"), Driver.CGROUPFS, None),
        (
            (
                "kubepods-burstable.slice",
                f"kubepods-burstable-pod{SYSTEMD_UID}.slice",
                f"cri-containerd-{CID}.scope",
            ),
            Driver.SYSTEMD,
            CgroupContainer(UID, CID),
        ),
        (
            (f"kubepods-pod{SYSTEMD_UID}.slice", f"crio-{CID}.scope"),
            Driver.SYSTEMD,
            CgroupContainer(UID, CID),
        ),
        ((f"kubepods-pod{SYSTEMD_UID}.slice", f"crio-conmon-{CID}.scope"), Driver.SYSTEMD, None),
        ((f"kubepods-pod{SYSTEMD_UID}.slice", CID), Driver.SYSTEMD, None),
        ((f"pod{UID}", CID), Driver.SYSTEMD, None),
    ],
)
def test_identify(parts: tuple[str, ...], driver: Driver, expected: CgroupContainer | None) -> None:
    assert identify(parts, driver) == expected


def test_paths_are_real(tmp_path: Path) -> None:
    """The tree's reads fail soft on a missing cgroup (no crash on a vanished container)."""
    tree = CgroupTree(tmp_path, Driver.CGROUPFS, 1)
    assert tree.read_cpus(tmp_path / "gone") is None
    assert tree.pids(tmp_path / "gone") == []


def test_detect_v1_below_the_kubelets_cgroup_root(tmp_path: Path) -> None:
    (tmp_path / "cpuset" / "rig" / "kubepods.slice").mkdir(parents=True)
    tree = detect(tmp_path, Driver.SYSTEMD, "/rig")
    assert (tree.root, tree.version) == (tmp_path / "cpuset" / "rig" / "kubepods.slice", 1)
    with pytest.raises(CgroupTreeError, match="no kubelet cgroup tree"):
        detect(tmp_path, Driver.CGROUPFS, "/rig")


def test_detect_v2_needs_the_cpuset_controller(tmp_path: Path) -> None:
    (tmp_path / "kubepods").mkdir()
    (tmp_path / "cgroup.controllers").write_text("cpu io memory hugetlb pids\n")
    with pytest.raises(CgroupTreeError, match="cpuset controller is not available"):
        detect(tmp_path)
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    tree = detect(tmp_path)
    assert (tree.root, tree.version) == (tmp_path / "kubepods", 2)
