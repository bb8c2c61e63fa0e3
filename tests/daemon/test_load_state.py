"""Start-up state: the checkpoint, else the CDI specs when it is missing, bad or inconsistent."""

from __future__ import annotations

from pathlib import Path

import pytest

from dracpu.cdi import CdiDir
from dracpu.checkpoint import CheckpointStore
from dracpu.core import node
from dracpu.core.claims import ClaimRef
from dracpu.core.cpuset import CpuSet
from dracpu.daemon.run import load_state
from tests.support.topologies import make_topology

TOPOLOGY = make_topology(2, 1, 4, 2)
CONFIG = node.NodeConfig(pool="n")


def stores(tmp_path: Path) -> tuple[CheckpointStore, CdiDir]:
    return CheckpointStore(tmp_path / "state", durable=False), CdiDir(tmp_path / "cdi")


def test_fresh(tmp_path: Path) -> None:
    store, cdi = stores(tmp_path)
    state, kind = load_state(TOPOLOGY, CONFIG, store, cdi)
    assert kind == "fresh"
    assert state.claims == {}


def test_checkpoint_wins(tmp_path: Path) -> None:
    store, cdi = stores(tmp_path)
    held = node.PreparedClaim(ClaimRef("ns", "c", "u1"), CpuSet.parse("2-3"))
    store.write(node.snapshot(node.NodeState.initial(TOPOLOGY, CONFIG, [held])))
    cdi.write("other", CpuSet.parse("5"))  # Not in the checkpoint: ignored (removed later).
    state, kind = load_state(TOPOLOGY, CONFIG, store, cdi)
    assert kind == "checkpoint"
    assert set(state.claims) == {"u1"}


def test_inconsistent_checkpoint_is_kept_aside_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, cdi = stores(tmp_path)
    # A well-formed, correctly checksummed file whose two claims share CPU 3.
    body = {
        "claims": [
            {"uid": "a", "namespace": "ns", "name": "a", "cpus": "2-3", "devices": []},
            {"uid": "b", "namespace": "ns", "name": "b", "cpus": "3-4", "devices": []},
        ]
    }
    store.write(body)
    cdi.write("a", CpuSet.parse("2-3"))
    cdi.write("b", CpuSet.parse("3-4"))  # Conflicts with a: not adopted.
    cdi.write("c", CpuSet.parse("9"))
    state, kind = load_state(TOPOLOGY, CONFIG, store, cdi)
    assert kind == "rebuilt"
    assert {u: c.cpus for u, c in state.claims.items()} == {
        "a": CpuSet.parse("2-3"),
        "c": CpuSet.parse("9"),
    }
    assert all(c.adopted for c in state.claims.values())
    assert (tmp_path / "state" / "checkpoint.json.corrupt-0").exists()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1  # One clear line.
    assert "kept it as" in errors[0].getMessage()
    # The rebuilt state was written back at once.
    assert store.load().status == "loaded"


def test_node_health_names_what_is_missing() -> None:
    from dracpu.daemon.health import node_health
    from dracpu.kube.publisher import PublisherHealth
    from dracpu.kubelet import Health, RegistrationState

    offline = make_topology(2, 1, 4, 2, offline=[5])
    state = node.NodeState.initial(TOPOLOGY, CONFIG)
    synced = PublisherHealth("in-sync", True, None, (), (), 1, 1, 1, 0, 0, 0.0)
    ok = node_health(state, synced, RegistrationState(registered=True, notifications=1))
    assert ok.ready
    assert ok.reasons == ()
    assert {d.health for d in ok.devices} == {Health.HEALTHY}
    failing = PublisherHealth("error", False, "503", (), (), 1, 0, 0, 0, 0, None)
    bad = node_health(state, failing, RegistrationState(error="bad", notifications=1))
    assert not bad.ready
    assert bad.reasons == (
        "kubelet rejected the registration: bad",
        "ResourceSlices error: 503",
    )
    # A device is unhealthy while the state's topology lacks some of its CPUs.
    shrunk = node.NodeState(
        topology=offline, config=CONFIG, devices=state.devices, claims={}, held=CpuSet()
    )
    report = node_health(shrunk, synced, RegistrationState(registered=True, notifications=1))
    assert report.reasons == ("unhealthy devices: cpudevnuma001",)
    assert "CPUs 5 are offline" in next(d.message for d in report.devices if d.message)


def test_node_health_names_the_memory_drivers_parts() -> None:
    from dracpu.daemon.health import DriverParts, node_health
    from dracpu.kube.publisher import PublisherHealth
    from dracpu.kubelet import RegistrationState

    state = node.NodeState.initial(TOPOLOGY, CONFIG)
    synced = PublisherHealth("in-sync", True, None, (), (), 1, 1, 1, 0, 0, 0.0)
    failing = PublisherHealth("error", False, "503", (), (), 1, 0, 0, 0, 0, None)
    ok = RegistrationState(registered=True, notifications=1)
    fine = node_health(state, synced, ok, DriverParts("dra.memory", synced, ok))
    assert fine.ready
    assert fine.memory is not None
    assert fine.memory.driver == "dra.memory"
    bad = node_health(state, synced, ok, DriverParts("dra.memory", failing, RegistrationState()))
    assert not bad.ready
    assert bad.reasons == (
        "dra.memory: not registered with the kubelet yet",
        "dra.memory: ResourceSlices error: 503",
    )
