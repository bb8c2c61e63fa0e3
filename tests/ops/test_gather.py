"""``dracpu gather``: the archive holds every part, says what is missing, and no secret."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from dracpu.gather import REDACTED, GatherSources, gather, redact

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
PLAIN_TOKEN = "s3cr3t-t0ken-value-1234"
KEY_DATA = "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t"


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for info in tar.getmembers():
            handle = tar.extractfile(info)
            assert handle is not None
            out[info.name.split("/", 1)[1]] = handle.read()
        return out


@pytest.fixture
def sources(tmp_path: Path, shared_dir: Path) -> GatherSources:
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoint.json").write_text(json.dumps({"version": 1, "claims": [{"uid": "u1"}]}))
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "dra.k8s.io-cpu_claim-u1.json").write_text('{"kind": "dra.k8s.io/cpu"}')
    (cdi / "other-vendor.json").write_text('{"kind": "vendor.com/gpu"}')
    config = tmp_path / "config.yaml"
    config.write_text(f"cpuDeviceMode: grouped\napiToken: {PLAIN_TOKEN}\n")

    def endpoint(path: str) -> bytes:
        return {
            "/status": json.dumps({"claims": [], "auth": {"token": PLAIN_TOKEN}}).encode(),
            "/metrics": b"dra_cpu_allocated_cpus 4.0\n",
            "/logs": f"I10:00:00 x] GET with Authorization: Bearer {TOKEN}\n".encode(),
        }[path]

    def slices() -> list[dict[str, object]]:
        return [{"metadata": {"name": "n-dra.cpu-x"}, "users": [{"client-key-data": KEY_DATA}]}]

    return GatherSources(
        node_name="n1",
        sysfs_root=shared_dir / "fixtures" / "sysfs" / "desktop" / "sys",
        state_dir=state,
        cdi_dir=cdi,
        config_file=config,
        fetch_endpoint=endpoint,
        list_slices=slices,
    )


def test_archive_has_every_part_and_no_secret(sources: GatherSources, tmp_path: Path) -> None:
    path = gather(sources, tmp_path / "out")
    assert path.name.startswith("dracpu-gather-n1-")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    files = members(path)
    assert set(files) == {
        "versions.json",
        "topology.yaml",
        "config.yaml",
        "state/checkpoint.json",
        "cdi/dra.k8s.io-cpu_claim-u1.json",
        "status.json",
        "metrics.txt",
        "logs.txt",
        "slices.json",
        "errors.txt",
    }
    assert b"threadsPerCore" in files["topology.yaml"]
    assert files["metrics.txt"] == b"dra_cpu_allocated_cpus 4.0\n"
    assert files["errors.txt"] == b""
    blob = b"".join(files.values())
    for secret in (TOKEN, PLAIN_TOKEN, KEY_DATA):
        assert secret.encode() not in blob, secret
    assert REDACTED.encode() in files["logs.txt"]
    assert json.loads(files["versions.json"])["packages"]["trio"]


def test_missing_parts_are_listed_not_fatal(tmp_path: Path) -> None:
    def down(path: str) -> bytes:
        raise ConnectionRefusedError(f"connect to {path} refused")

    sources = GatherSources(
        node_name="n2",
        sysfs_root=tmp_path / "no-sysfs",
        state_dir=tmp_path / "absent",
        fetch_endpoint=down,
    )
    files = members(gather(sources, tmp_path))
    errors = files["errors.txt"].decode().splitlines()
    assert any(line.startswith("topology.yaml: TopologyError") for line in errors)
    assert f"state/: {tmp_path / 'absent'} is not a directory" in errors
    assert "cdi/: no directory given" in errors
    assert "status.json: ConnectionRefusedError: connect to /status refused" in errors
    assert "slices.json: no API server config given" in errors
    assert "versions.json" in files


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ({"token": "abc"}, {"token": REDACTED}),
        (
            {"users": [{"user": {"client-key-data": "x"}}]},
            {"users": [{"user": {"client-key-data": REDACTED}}]},
        ),
        ("Authorization: Bearer abcdefgh12345", f"Authorization: Bearer {REDACTED}"),
        ({"cpus": "0-3", "claims": 2}, {"cpus": "0-3", "claims": 2}),
    ],
    ids=["token-key", "kubeconfig-key", "bearer-text", "plain"],
)
def test_redact(value: object, want: object) -> None:
    assert redact(value) == want
