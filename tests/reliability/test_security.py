"""Security checks: file modes of the daemon's dirs, sockets and checkpoint (root alone), and
CDI specs that carry nothing but the claim's env variable (no mounts, hooks or devices)."""

from __future__ import annotations

import json
import re
import stat
import string
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from dracpu.cdi import CdiDir, CdiError, spec_document, spec_file_name
from dracpu.core.cpuset import CpuSet
from tests.daemon.support import claim, dra_api, grouped
from tests.daemon.test_daemon import start
from tests.kube.fake_apiserver import FakeApiServer
from tests.reliability.test_disk_faults import env

__all__ = ["env"]

API = dra_api("v1")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def assert_only_env(doc: dict[str, object], uid: str, cpus: CpuSet) -> None:
    """The spec has one device whose only edit is the one env entry ``DRA_CPUSET_<uid>``."""
    assert set(doc) == {"cdiVersion", "kind", "devices"}
    devices = doc["devices"]
    assert isinstance(devices, list)
    assert len(devices) == 1
    assert set(devices[0]) == {"name", "containerEdits"}
    assert devices[0]["name"] == f"claim-{uid}"
    edits = devices[0]["containerEdits"]
    assert list(edits) == ["env"]
    assert edits["env"] == [f"DRA_CPUSET_{uid}={cpus}"]


async def test_modes_of_dirs_sockets_and_checkpoint(
    nursery: trio.Nursery, env: tuple[Path, FakeApiServer]
) -> None:
    root, fake = env
    (root / "state").mkdir(mode=0o755)  # As a hostPath DirectoryOrCreate leaves it.
    (root / "state").chmod(0o755)
    r = await start(nursery, root, fake)
    r.put_claim(claim("u1", [grouped("req", "cpudevnuma000", 2)]))
    response = await r.call(API, "prepare", "u1")
    assert response.claims["u1"].error == ""
    state = root / "state"
    assert mode(state) == 0o700  # Tightened at start.
    assert mode(state / "checkpoint.json") == 0o600
    assert stat.S_ISSOCK((state / "status.sock").lstat().st_mode)
    assert mode(state / "status.sock") == 0o600
    paths = r.daemon.plugin_config.paths() if r.daemon.plugin_config else None
    assert paths is not None
    for sock in (paths.dra_socket, paths.registration_socket):
        assert stat.S_ISSOCK(sock.lstat().st_mode), sock
        assert mode(sock) == 0o600, (sock, oct(mode(sock)))
    assert mode(paths.dra_socket.parent) == 0o700  # Our plugin dir, created by us.
    # The CDI spec on disk: readable by the runtime, and nothing but the env.
    spec = r.cdi().path("u1")
    assert mode(spec) == 0o644
    cpus = r.daemon.owner.state.claims["u1"].cpus
    assert_only_env(json.loads(spec.read_text()), "u1", cpus)
    r.scope.cancel()


UIDS = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=40)
CPUS = st.frozensets(st.integers(0, 1023), min_size=1, max_size=64).map(lambda s: CpuSet.of(s))


# What a UID may be (letters, digits and inner '-', as UUIDs), stated independently here.
VALID_UID = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")


@given(uid=UIDS, cpus=CPUS)
def test_cdi_spec_carries_only_the_env(uid: str, cpus: CpuSet) -> None:
    if not VALID_UID.fullmatch(uid):
        with pytest.raises(CdiError, match="claim UID"):
            spec_document(uid, cpus)
        return
    assert_only_env(spec_document(uid, cpus), uid, cpus)


def _refusal(uid: str) -> CdiError | None:
    try:
        spec_file_name(uid)
    except CdiError as exc:
        return exc
    return None


@given(uid=st.text(max_size=60))
def test_no_claim_uid_escapes_the_cdi_dir_or_the_env(uid: str) -> None:
    """Any UID either is refused, or names one file directly in the CDI dir and one variable."""
    refused = _refusal(uid)
    if refused is not None:
        assert "claim UID" in str(refused)
        return
    name = spec_file_name(uid)
    doc = spec_document(uid, CpuSet.of([1]))
    assert "/" not in name
    assert name not in (".", "..")
    assert CdiDir(Path("/cdi")).path(uid).parent == Path("/cdi")
    (entry,) = doc["devices"][0]["containerEdits"]["env"]
    assert entry.count("=") == 1
    assert "\n" not in entry
    assert "\0" not in entry
