"""Fixtures for end-to-end tests against the real-component rig (see docs/e2e.md)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.node_agent import NodeAgent, kube_client
from tests.e2e.rig import Rig, current, rig_is_up


@pytest.fixture(scope="session")
def rig() -> Rig:
    """The running rig's locations; skips when it is down (CI always brings it up)."""
    r = current()
    if not rig_is_up(r):
        pytest.skip("rig not running: run `just rig-up`")
    return r


@pytest.fixture
def kube(rig: Rig) -> Iterator[httpx.Client]:
    """An httpx client for the rig's apiserver, authenticated as the rig admin."""
    with kube_client(rig) as client:
        yield client


@pytest.fixture
def node_agent(rig: Rig) -> Iterator[NodeAgent]:
    """A kubelet stand-in for the rig's Node (CRI via grpcio; add DRA sockets as needed)."""
    agent = NodeAgent(rig)
    try:
        yield agent
    finally:
        agent.close()
