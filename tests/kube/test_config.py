"""Loading the client configuration from kubeconfig files and in-cluster service-account files."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import yaml

from dracpu.kube.config import TokenSource, load_config, load_in_cluster, load_kubeconfig
from dracpu.kube.errors import KubeConfigError


def write_kubeconfig(path: Path, user: dict[str, object], cluster: dict[str, object]) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "main",
        "contexts": [
            {"name": "main", "context": {"cluster": "c", "user": "u", "namespace": "team"}},
            {"name": "other", "context": {"cluster": "c2", "user": "u"}},
        ],
        "clusters": [
            {"name": "c", "cluster": cluster},
            {"name": "c2", "cluster": {"server": "https://10.0.0.2:6443"}},
        ],
        "users": [{"name": "u", "user": user}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_kubeconfig_with_data_fields(tmp_path: Path) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    path = write_kubeconfig(
        tmp_path / "config",
        {
            "client-certificate-data": base64.b64encode(pem).decode(),
            "client-key-data": base64.b64encode(b"key").decode(),
        },
        {
            "server": "https://127.0.0.1:6443/",
            "certificate-authority-data": base64.b64encode(pem).decode(),
        },
    )
    cfg = load_kubeconfig(path)
    assert cfg.server == "https://127.0.0.1:6443"
    assert cfg.ca_data == pem
    assert cfg.client_cert_data == pem
    assert cfg.client_key_data == b"key"
    assert cfg.namespace == "team"
    assert "context 'main'" in cfg.origin
    assert load_kubeconfig(path, "other").server == "https://10.0.0.2:6443"


def test_kubeconfig_relative_files_and_token_file(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    path = write_kubeconfig(
        tmp_path / "config",
        {"tokenFile": "pki/token"},
        {"server": "https://h:1", "certificate-authority": "pki/ca.crt"},
    )
    cfg = load_kubeconfig(path)
    assert cfg.ca_file == str(tmp_path / "pki" / "ca.crt")
    assert cfg.token_file == str(tmp_path / "pki" / "token")


@pytest.mark.parametrize(
    ("user", "cluster", "context", "message"),
    [
        ({}, {"server": "https://h:1"}, "nope", "no context named 'nope'"),
        ({"exec": {"command": "aws"}}, {"server": "https://h:1"}, None, "'exec' is not supported"),
        ({}, {"server": "ftp://h"}, None, "http\\(s\\) URL"),
        ({}, {"server": "https://h:1", "certificate-authority-data": 5}, None, "base64 string"),
    ],
    ids=["missing-context", "exec-plugin", "bad-url", "bad-ca-data"],
)
def test_kubeconfig_errors_name_file_and_field(
    tmp_path: Path,
    user: dict[str, object],
    cluster: dict[str, object],
    context: str | None,
    message: str,
) -> None:
    path = write_kubeconfig(tmp_path / "config", user, cluster)
    with pytest.raises(KubeConfigError, match=message) as info:
        load_kubeconfig(path, context)
    assert str(path) in str(info.value)


def test_in_cluster(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "ca.crt").write_text("ca")
    (tmp_path / "namespace").write_text("kube-system")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    cfg = load_in_cluster(env, tmp_path)
    assert cfg.server == "https://[fd00::1]:443"
    assert cfg.token_file == str(tmp_path / "token")
    assert cfg.namespace == "kube-system"
    assert load_config(env=env, sa_dir=tmp_path).origin == "in-cluster"
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        load_in_cluster({}, tmp_path)
    os.remove(tmp_path / "ca.crt")
    with pytest.raises(KubeConfigError, match=r"ca\.crt"):
        load_in_cluster(env, tmp_path)


def test_no_config_anywhere(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="no kubeconfig found"):
        load_config(env={"HOME": str(tmp_path)}, sa_dir=tmp_path)


def test_token_source_rereads_on_rotation_and_interval(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one")
    now = [0.0]
    source = TokenSource(path=str(path), refresh_seconds=60, clock=lambda: now[0])
    assert source.get() == "one"
    st = path.stat()
    path.write_text("two")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: not noticed yet
    assert source.get() == "one"
    now[0] = 61.0
    assert source.get() == "two"
    path.write_text("three")  # new mtime: noticed at once
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert source.get() == "three"
    path.write_text("")
    source.invalidate()
    with pytest.raises(KubeConfigError, match="empty"):
        source.get()
