"""tests/e2e/rig.py itself: versions file parsing and the extra-apiserver command line (no rig)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.rig import Rig, apiserver_argv, current, read_versions


def _rig(tmp_path: Path) -> Rig:
    return Rig(
        versions={"KUBERNETES_VERSION": "v1.37.2"},
        bin_dir=tmp_path / "bin",
        state_dir=tmp_path / "state",
        node_name="n1",
        apiserver_port=16443,
        etcd_client_port=12379,
    )


def test_versions_file_pins_every_component() -> None:
    versions = read_versions()
    assert set(versions) >= {
        "KUBERNETES_VERSION",
        "KUBE_STAGING_VERSION",
        "ETCD_VERSION",
        "CONTAINERD_VERSION",
    }
    k8s, staging = versions["KUBERNETES_VERSION"], versions["KUBE_STAGING_VERSION"]
    assert k8s.split(".")[1:] == staging.split(".")[1:]  # v1.X.Y <-> v0.X.Y
    assert versions["KUBERNETES_VERSION"] in str(current().bin_dir)


def test_read_versions_rejects_malformed_line(tmp_path: Path) -> None:
    f = tmp_path / "versions.env"
    f.write_text("# c\nGOOD=1\nnot a pair\n")
    with pytest.raises(ValueError, match="not a pair"):
        read_versions(f)


def test_extra_apiserver_overrides_rig_gates(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    rig.state_dir.mkdir()
    (rig.state_dir / "feature-gates").write_text(
        "DRAConsumableCapacity=true,DRADeviceTaints=true\n"
    )
    argv = apiserver_argv(
        rig,
        secure_port=16444,
        etcd_prefix="/registry-nocc",
        feature_gates={"DRAConsumableCapacity": False},
    )
    assert argv[0] == str(tmp_path / "bin" / "kube-apiserver")
    assert "--secure-port=16444" in argv
    assert "--etcd-prefix=/registry-nocc" in argv
    assert "--etcd-servers=http://127.0.0.1:12379" in argv
    assert "--feature-gates=DRAConsumableCapacity=false,DRADeviceTaints=true" in argv


def test_extra_apiserver_refuses_the_rigs_etcd_prefix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rig's own"):
        apiserver_argv(_rig(tmp_path), secure_port=16444, etcd_prefix="/registry/")
