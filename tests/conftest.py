"""Shared pytest fixtures.

``shared_dir``: the sibling ``../shared`` directory of the repository root (real sysfs captures,
upstream references). CI has it; elsewhere the tests that need it skip, saying so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = (REPO_ROOT / ".." / "shared").resolve()
SKIP_REASON = "needs ../shared fixtures (CI has them)"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``<repo>/../shared``; skips the test when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(SKIP_REASON)
    return SHARED_DIR
