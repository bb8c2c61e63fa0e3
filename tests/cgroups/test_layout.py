"""Container cgroups in the kubelet's cgroupfs and systemd layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from dracpu.cgroups import CgroupTree
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
