"""Fixtures for NRI tests: the Go runtime peer binaries, built once per cache."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nri.peer import NRI_VERSIONS, build_peer


@pytest.fixture(scope="session", params=NRI_VERSIONS)
def nri_peer_binary(request: pytest.FixtureRequest) -> Path:
    """The peer binary for one NRI version (built into ~/.cache/dracpu/peers on first use)."""
    return build_peer(request.param)


@pytest.fixture
def socket_path() -> Iterator[str]:
    """A short unix socket path (tmp_path can exceed the 108-byte sun_path limit)."""
    d = tempfile.mkdtemp(prefix="nri-", dir="/tmp")
    yield str(Path(d) / "nri.sock")
    shutil.rmtree(d, ignore_errors=True)
