"""Shared pytest fixtures.

``shared_dir``: the sibling ``../shared`` directory of the repository root (real sysfs captures,
upstream references). CI has it; elsewhere the tests that need it skip, saying so.
``sysfs_tmp``: a scratch directory for synthetic sysfs trees, on tmpfs when available.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sysfs_tree import scratch_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = (REPO_ROOT / ".." / "shared").resolve()
SKIP_REASON = "needs ../shared fixtures (CI has them)"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``<repo>/../shared``; skips the test when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(SKIP_REASON)
    return SHARED_DIR


@pytest.fixture
def sysfs_tmp() -> Iterator[Path]:
    """An empty directory (tmpfs when writable) removed after the test; see ``scratch_dir``."""
    with scratch_dir() as path:
        yield path
