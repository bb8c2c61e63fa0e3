"""Fixtures for end-to-end tests against the real-component rig (see docs/e2e.md)."""

from __future__ import annotations

import pytest

from tests.e2e.rig import Rig, current, rig_is_up


@pytest.fixture(scope="session")
def rig() -> Rig:
    """The running rig's locations; skips when it is down (CI always brings it up)."""
    r = current()
    if not rig_is_up(r):
        pytest.skip("rig not running: run `just rig-up`")
    return r
