"""The node state machine, table-driven per device mode over the real captures, and every error.

Captures come from ../shared/fixtures/sysfs (skipped without them, saying so); synthetic
machines from tests/support/topologies.py for offline-CPU cases.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dracpu.core import node as node_module
from dracpu.core.allocator import AllocationOptions
from dracpu.core.cdi import env_entry
from dracpu.core.claims import ClaimRef
from dracpu.core.cpuset import CpuSet
from dracpu.core.node import (
    ClaimFailed,
    ClaimPrepared,
    ClaimUnprepared,
    DeviceCpus,
    NodeConfig,
    NodeState,
    Prepare,
    RemoveCdiSpec,
    ReplyPrepare,
    ReplyUnprepare,
    ReportOfflineClaims,
    RepublishSlices,
    TopologyChanged,
    Unprepare,
    WriteCdiSpec,
    WriteCheckpoint,
    WriteClaimStatus,
    claim_status_devices,
    restore,
    snapshot,
    step,
)
from dracpu.core.slices import DeviceMode, GroupBy, build_slice_specs
from dracpu.core.topology import Topology
from dracpu.errors import InvalidValueError
from dracpu.sysfs import read_topology
from tests.support.captures import CAPTURE_NAMES
from tests.support.claims import (
    POOL,
    cpuset_config,
    grouped,
    individual,
    parsed,
    prepare,
)
from tests.support.topologies import make_topology

_cache: dict[str, Topology] = {}


@pytest.fixture(params=CAPTURE_NAMES)
def capture(request: pytest.FixtureRequest, shared_dir: Path) -> Topology:
    name: str = request.param
    if name not in _cache:
        _cache[name] = read_topology(shared_dir / "fixtures" / "sysfs" / name / "sys")
    return _cache[name]


def state_of(topology: Topology, **config: object) -> NodeState:
    return NodeState.initial(topology, NodeConfig(pool=POOL, **config))  # type: ignore[arg-type]


def cpus_of(outcome: object) -> CpuSet:
    assert isinstance(outcome, ClaimPrepared), outcome
    return outcome.claim.cpus


def error_of(outcome: object) -> str:
    assert isinstance(outcome, ClaimFailed), outcome
    return outcome.error


def unprepare(state: NodeState, *uids: str) -> tuple[NodeState, tuple[object, ...]]:
    return step(state, Unprepare(tuple(ClaimRef("default", f"claim-{u}", u) for u in uids)))


# --- grouped modes over every capture ----------------------------------------------------------


@pytest.mark.parametrize("group_by", [GroupBy.NUMANODE, GroupBy.SOCKET, GroupBy.MACHINE])
def test_grouped_prepare_on_captures(capture: Topology, group_by: GroupBy) -> None:
    reserved = CpuSet.of([capture.online.first()])
    state = state_of(capture, group_by=group_by, reserved=reserved)
    device, device_cpus = next(iter(state.devices.items()))
    count = min(4, len(device_cpus) // 2)
    state, effects, results = prepare(
        state, parsed("a", [grouped(device, count)]), parsed("b", [grouped(device, count)])
    )
    a, b = cpus_of(results["a"]), cpus_of(results["b"])
    assert len(a) == len(b) == count
    assert a | b <= device_cpus
    assert a.isdisjoint(b)
    assert a.isdisjoint(reserved)
    assert b.isdisjoint(reserved)
    assert state.held == a | b
    # Checkpoint first, one per batch; reply last.
    assert isinstance(effects[0], WriteCheckpoint)
    assert effects[0].state is state
    assert [type(e) for e in effects].count(WriteCheckpoint) == 1
    assert isinstance(effects[-1], ReplyPrepare)
    cdi = [e for e in effects if isinstance(e, WriteCdiSpec)]
    assert [(e.claim_uid, e.env) for e in cdi] == [
        ("a", env_entry("a", a)),
        ("b", env_entry("b", b)),
    ]

    # Idempotent: a retry of the same UID gets the same CPUs and writes no new checkpoint.
    again, effects, results = prepare(state, parsed("a", [grouped(device, count)]))
    assert cpus_of(results["a"]) == a
    assert again == state
    assert not any(isinstance(e, WriteCheckpoint) for e in effects)
    assert any(isinstance(e, WriteCdiSpec) for e in effects)

    # Unprepare releases; unknown UIDs succeed; a second unprepare is a no-op.
    state, effects = unprepare(state, "a", "never-prepared")
    assert isinstance(effects[0], WriteCheckpoint)
    assert RemoveCdiSpec("a") in effects
    reply = effects[-1]
    assert isinstance(reply, ReplyUnprepare)
    assert reply.results == {"a": ClaimUnprepared(), "never-prepared": ClaimUnprepared()}
    assert state.held == b
    assert set(state.claims) == {"b"}
    again2, effects = unprepare(state, "a")
    assert again2 == state
    assert not any(isinstance(e, WriteCheckpoint) for e in effects)


def test_several_results_give_the_union(capture: Topology) -> None:
    state = state_of(capture, group_by=GroupBy.NUMANODE)
    names = list(state.devices)
    device = names[-1]
    results_json = [grouped(names[0], 2, "r0"), grouped(device, 2, "r1")]
    if len(names) == 1:
        results_json = [grouped(device, 2, "r0"), grouped(device, 2, "r1")]
    state, _, results = prepare(state, parsed("a", results_json))
    outcome = results["a"]
    assert isinstance(outcome, ClaimPrepared)
    per_device = outcome.claim.devices
    assert len(per_device) == 2
    assert per_device[0].cpus.isdisjoint(per_device[1].cpus)
    assert outcome.claim.cpus == per_device[0].cpus | per_device[1].cpus
    assert len(outcome.claim.cpus) == 4
    for entry in per_device:
        assert entry.cpus <= state.devices[entry.device]


def test_grouped_picks_inside_device_around_other_claims() -> None:
    # Two sockets x 2 NUMA x 10 cores x SMT-2: a 40-CPU socket, as in the goal.
    topology = make_topology(sockets=2, numa_per_socket=2, cores_per_numa=10, threads=2)
    state = state_of(topology, group_by=GroupBy.SOCKET)
    state, _, results = prepare(state, parsed("a", [grouped("cpudevsocket000", 10)]))
    state, _, results = prepare(state, parsed("b", [grouped("cpudevsocket000", 16)]))
    b = cpus_of(results["b"])
    assert b <= topology.sockets[0]
    assert b.isdisjoint(state.claims["a"].cpus)


def test_not_enough_cpus_is_a_per_claim_error() -> None:
    topology = make_topology(sockets=1, numa_per_socket=2, cores_per_numa=2, threads=2)
    state = state_of(topology)
    state, _, results = prepare(
        state,
        parsed("big", [grouped("cpudevnuma000", 5)]),
        parsed("ok", [grouped("cpudevnuma001", 2)]),
    )
    message = error_of(results["big"])
    assert "ResourceClaim default/claim-big (uid big)" in message
    assert "device cpudevnuma000" in message
    assert "only 4 are available" in message
    assert len(cpus_of(results["ok"])) == 2
    assert set(state.claims) == {"ok"}


def test_allocator_options_from_config_and_defaults() -> None:
    topology = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=4, threads=2)
    state = state_of(topology, defaults=AllocationOptions(full_pcpus_only=True))
    _, _, results = prepare(state, parsed("odd", [grouped("cpudevnuma000", 3)]))
    assert "full-pcpus-only" in error_of(results["odd"])
    params = {
        "source": "FromClaim",
        "requests": ["req"],
        "opaque": {
            "driver": "dra.cpu",
            "parameters": {"apiVersion": "v1alpha1", "cpuConfig": {"fullPCPUsOnly": False}},
        },
    }
    _, _, results = prepare(state, parsed("odd", [grouped("cpudevnuma000", 3)], [params]))
    assert len(cpus_of(results["odd"])) == 3


# --- the opaque cpuset -------------------------------------------------------------------------


def machine_state(**config: object) -> NodeState:
    topology = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=4, threads=2)
    return state_of(topology, group_by=GroupBy.MACHINE, **config)


def test_opaque_cpuset_is_used() -> None:
    state = machine_state()
    state, _, results = prepare(
        state, parsed("a", [grouped("cpudevmachine", 3)], [cpuset_config("1-3")])
    )
    assert cpus_of(results["a"]) == CpuSet.parse("1-3")


@pytest.mark.parametrize(
    ("cpuset", "count", "reason"),
    [
        ("1-3", 4, "has 3 CPUs but the consumed capacity is 4"),
        ("0-1", 2, "contains reserved CPUs 0"),
        ("6-9", 4, "contains offline CPUs 8-9"),
        ("4-5", 2, "already held by claim default/claim-first (uid first)"),
    ],
)
def test_opaque_cpuset_validation(cpuset: str, count: int, reason: str) -> None:
    state = machine_state(reserved=CpuSet.of([0]))
    state, _, _ = prepare(
        state, parsed("first", [grouped("cpudevmachine", 2)], [cpuset_config("4-5")])
    )
    _, _, results = prepare(
        state, parsed("x", [grouped("cpudevmachine", count)], [cpuset_config(cpuset)])
    )
    message = error_of(results["x"])
    assert reason in message
    assert "ResourceClaim default/claim-x (uid x) request 'req'" in message


def test_opaque_cpuset_outside_the_device() -> None:
    topology = make_topology(sockets=1, numa_per_socket=2, cores_per_numa=2, threads=2)
    state = state_of(topology)
    outside = topology.numas[1]
    _, _, results = prepare(
        state, parsed("x", [grouped("cpudevnuma000", 2)], [cpuset_config(str(outside)[:3])])
    )
    assert "outside the device" in error_of(results["x"])


def test_opaque_cpuset_twice_in_one_claim() -> None:
    state = machine_state()
    config = [cpuset_config("1-2", "r0"), cpuset_config("2-3", "r1")]
    _, _, results = prepare(
        state,
        parsed("x", [grouped("cpudevmachine", 2, "r0"), grouped("cpudevmachine", 2, "r1")], config),
    )
    assert "an earlier device of the same claim" in error_of(results["x"])


def test_machine_mode_without_cpuset_allocates() -> None:
    state = machine_state()
    _, _, results = prepare(state, parsed("a", [grouped("cpudevmachine", 4)]))
    assert len(cpus_of(results["a"])) == 4


# --- individual mode ---------------------------------------------------------------------------


def test_individual_on_captures(capture: Topology) -> None:
    reserved = CpuSet.of([capture.online.first()])
    state = state_of(capture, mode=DeviceMode.INDIVIDUAL, reserved=reserved)
    names = list(state.devices)
    state, effects, results = prepare(
        state, parsed("a", [individual(names[0]), individual(names[1])])
    )
    expected = state.devices[names[0]] | state.devices[names[1]]
    assert cpus_of(results["a"]) == expected
    assert expected.isdisjoint(reserved)
    status = next(e for e in effects if isinstance(e, WriteClaimStatus))
    assert [d["device"] for d in status.devices] == names[:2]
    # The same device for another claim is a stale allocation.
    _, _, results = prepare(state, parsed("b", [individual(names[1])]))
    assert "stale allocation" in error_of(results["b"])
    assert "claim default/claim-a (uid a)" in error_of(results["b"])


def test_individual_mapping_stays_while_held() -> None:
    topology = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=4, threads=2)
    state = state_of(topology, mode=DeviceMode.INDIVIDUAL)
    held_cpu = state.devices["cpudev003"]
    state, _, _ = prepare(state, parsed("a", [individual("cpudev003")]))
    # CPU 0 goes offline: the published list renumbers, the claim keeps its CPU.
    smaller = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=4, threads=2, offline=[0])
    state, effects = step(state, TopologyChanged(smaller))
    assert RepublishSlices("the CPU topology changed") in effects
    assert state.devices["cpudev003"] != held_cpu
    _, _, results = prepare(state, parsed("a", [individual("cpudev003")]))
    assert cpus_of(results["a"]) == held_cpu
    assert state.claims["a"].devices == (DeviceCpus("req", POOL, "cpudev003", held_cpu),)


def test_individual_unknown_device_is_stale() -> None:
    topology = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=2, threads=1)
    state = state_of(topology, mode=DeviceMode.INDIVIDUAL)
    _, _, results = prepare(state, parsed("a", [individual("cpudev099")]))
    assert "stale allocation: no such device is published" in error_of(results["a"])


# --- identity and retries ----------------------------------------------------------------------


def test_uid_mismatch_is_refused() -> None:
    state = machine_state()
    claim = parsed("api-uid", [grouped("cpudevmachine", 2)])
    ref = ClaimRef("default", "claim-api-uid", "kubelet-uid")
    state2, effects = step(state, Prepare((ref,), {"kubelet-uid": claim}))
    reply = effects[-1]
    assert isinstance(reply, ReplyPrepare)
    assert "replaced" in error_of(reply.results["kubelet-uid"])
    assert state2 == state
    assert len(effects) == 1


def test_fetch_errors_and_missing_claims_are_per_claim() -> None:
    state = machine_state()
    refs = (ClaimRef("ns", "gone", "u1"), ClaimRef("ns", "bad", "u2"))
    _, effects = step(state, Prepare(refs, {"u2": "ResourceClaim ns/bad: not allocated"}))
    reply = effects[-1]
    assert isinstance(reply, ReplyPrepare)
    assert reply.results == {
        "u1": ClaimFailed("ResourceClaim ns/gone (uid u1): not found"),
        "u2": ClaimFailed("ResourceClaim ns/bad: not allocated"),
    }


def test_retry_with_other_devices_is_refused() -> None:
    topology = make_topology(sockets=1, numa_per_socket=2, cores_per_numa=2, threads=2)
    state = state_of(topology)
    state, _, _ = prepare(state, parsed("a", [grouped("cpudevnuma000", 2)]))
    _, _, results = prepare(state, parsed("a", [grouped("cpudevnuma001", 2)]))
    assert "already prepared with devices cpudevnuma000" in error_of(results["a"])


def test_claim_without_our_results_succeeds_empty() -> None:
    state = machine_state()
    after, effects, results = prepare(state, parsed("a", []))
    outcome = results["a"]
    assert isinstance(outcome, ClaimPrepared)
    assert outcome.cdi_device_ids == ()
    assert after == state
    assert len(effects) == 1


# --- topology changes --------------------------------------------------------------------------


def test_offline_cpus_are_reported_and_never_handed_out() -> None:
    topology = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=4, threads=2)
    state = state_of(topology, group_by=GroupBy.MACHINE)
    state, _, _ = prepare(state, parsed("a", [grouped("cpudevmachine", 2)], [cpuset_config("2-3")]))
    offline = make_topology(
        sockets=1, numa_per_socket=1, cores_per_numa=4, threads=2, offline=[3, 5]
    )
    state, effects = step(state, TopologyChanged(offline))
    assert ReportOfflineClaims(((ClaimRef("default", "claim-a", "a"), CpuSet.of([3])),)) in effects
    assert state.claims["a"].cpus == CpuSet.parse("2-3")  # not moved
    _, _, results = prepare(state, parsed("b", [grouped("cpudevmachine", 5)]))
    assert 5 not in cpus_of(results["b"])
    _, _, results = prepare(state, parsed("c", [grouped("cpudevmachine", 1)], [cpuset_config("5")]))
    assert "offline" in error_of(results["c"])


# --- checkpoint payload and claim status -------------------------------------------------------


def test_snapshot_round_trip(capture: Topology) -> None:
    state = state_of(capture)
    device = next(iter(state.devices))
    state, _, _ = prepare(state, parsed("a", [grouped(device, 2, share="s-1")]))
    config = state.config
    assert restore(snapshot(state), capture, config) == dataclass_without_containers(state)


def dataclass_without_containers(state: NodeState) -> NodeState:
    return NodeState.initial(state.topology, state.config, state.claims.values())


@pytest.mark.parametrize(
    "payload",
    [
        {"claims": "x"},
        {"claims": [{"uid": "a"}]},
        {"claims": [{"uid": "a", "namespace": "n", "name": "c", "cpus": "1-"}]},
        {
            "claims": [
                {"uid": "a", "namespace": "n", "name": "a", "cpus": "1-2"},
                {"uid": "b", "namespace": "n", "name": "b", "cpus": "2-3"},
            ]
        },
    ],
    ids=["not-a-list", "missing-fields", "bad-cpus", "overlap"],
)
def test_restore_rejects_bad_payloads(payload: dict[str, object]) -> None:
    topology = make_topology()
    with pytest.raises(InvalidValueError):
        restore(payload, topology, NodeConfig(pool=POOL))


def test_claim_status_devices() -> None:
    topology = make_topology(sockets=1, numa_per_socket=2, cores_per_numa=2, threads=2)
    state = state_of(topology)
    state, _, _ = prepare(state, parsed("a", [grouped("cpudevnuma001", 2, share="s-1")]))
    claim = state.claims["a"]
    assert claim_status_devices(claim) == (
        {
            "driver": "dra.cpu",
            "pool": POOL,
            "device": "cpudevnuma001",
            "shareID": "s-1",
            "data": {"cpuset": str(claim.cpus), "claimCpuset": str(claim.cpus)},
        },
    )


def test_conflicts_inside_one_batch_name_the_earlier_claim() -> None:
    topology = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=2, threads=2)
    state = state_of(topology, mode=DeviceMode.INDIVIDUAL)
    _, _, results = prepare(
        state, parsed("a", [individual("cpudev000")]), parsed("b", [individual("cpudev000")])
    )
    assert isinstance(results["a"], ClaimPrepared)
    assert "already held by claim default/claim-a (uid a)" in error_of(results["b"])


def test_grouped_result_without_consumed_capacity() -> None:
    state = machine_state()
    _, _, results = prepare(state, parsed("a", [individual("cpudevmachine")]))
    assert "consumed capacity dra.cpu/cpu is missing" in error_of(results["a"])


# --- a restart with another device mode --------------------------------------------------------


def _devices_of(state: NodeState, hidden: CpuSet) -> dict[str, dict[str, object]]:
    options = dataclasses.replace(state.config.slice_options(), hidden=hidden)
    return {
        d["name"]: d for spec in build_slice_specs(state.topology, options) for d in spec["devices"]
    }


def test_grouped_claim_after_a_switch_to_individual_hides_its_cpus() -> None:
    topology = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=4, threads=1)
    before = state_of(topology)
    before, _, results = prepare(before, parsed("old", [grouped("cpudevnuma000", 2)]))
    held = cpus_of(results["old"])
    assert node_module.unaccounted_held(before) == CpuSet()

    after = restore(snapshot(before), topology, NodeConfig(pool=POOL, mode=DeviceMode.INDIVIDUAL))
    assert node_module.unaccounted_held(after) == held
    published = _devices_of(after, node_module.unaccounted_held(after))
    offered = {name for name, cpus in after.devices.items() if cpus <= held}
    assert offered
    assert offered.isdisjoint(published)
    assert len(published) == len(after.devices) - len(held)
    # A free individual device is still prepared; releasing the old claim reveals its CPUs.
    free = next(n for n in published)
    after, _, results = prepare(after, parsed("new", [individual(free)]))
    assert cpus_of(results["new"]).isdisjoint(held)
    assert node_module.unaccounted_held(after) == held
    after, effects = unprepare(after, "old")
    assert RepublishSlices("CPUs of a claim from before a device-mode switch") in effects
    assert node_module.unaccounted_held(after) == CpuSet()
    assert len(_devices_of(after, CpuSet())) == len(after.devices)
    # Releasing a claim that was never hidden does not republish.
    _, effects = unprepare(after, "new")
    assert not any(isinstance(e, RepublishSlices) for e in effects)


def test_individual_claim_after_a_switch_to_grouped_shrinks_capacity() -> None:
    topology = make_topology(sockets=1, numa_per_socket=2, cores_per_numa=4, threads=1)
    before = state_of(topology, mode=DeviceMode.INDIVIDUAL)
    before, _, results = prepare(before, parsed("old", [individual("cpudev001")]))
    held = cpus_of(results["old"])
    after = restore(snapshot(before), topology, NodeConfig(pool=POOL))
    assert node_module.unaccounted_held(after) == held
    published = _devices_of(after, node_module.unaccounted_held(after))
    for name, cpus in after.devices.items():
        capacity = published[name]["capacity"]
        assert isinstance(capacity, dict)
        assert capacity["dra.cpu/cpu"] == {"value": str(len(cpus - held))}
    # Grouped allocations made in the new mode are accounted for and hide nothing.
    after, _, results = prepare(after, parsed("new", [grouped("cpudevnuma001", 2)]))
    assert node_module.unaccounted_held(after) == held
