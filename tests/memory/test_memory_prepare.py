"""Pure prepare for ``dra.memory``: grants from the chosen device, per-claim errors for bad
quantities and over-requests, idempotency, and the upstream ``DRAMEMORY_*`` env format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dracpu.core.memory import GIB, MIB, HugePagePool, MemoryNode, MemoryTopology
from dracpu.core.memory_prepare import (
    AllocatedMemory,
    MemoryAssignment,
    MemoryClaimError,
    assignment_from_json,
    assignment_to_json,
    cdi_device_id,
    memory_env,
    prepare_memory,
    prepare_memory_claims,
)
from dracpu.core.memory_slices import (
    MemoryDevice,
    MemorySliceOptions,
    build_memory_slice_specs,
    memory_devices,
)
from dracpu.core.quantity import parse_bytes
from dracpu.core.slice_plan import plan_slices
from dracpu.errors import InvalidValueError
from tests.core.test_slices import validator

UID = "0f3c1b2a-7d4e-4c1b-9a53-1e2d3c4b5a69"
OTHER = "9a1b2c3d-0000-4000-8000-000000000001"
POOL = "node-a"

TOPO = MemoryTopology(
    nodes=(
        MemoryNode(0, 8 * GIB, hugepages=(HugePagePool(2 * MIB, 512), HugePagePool(GIB, 1))),
        MemoryNode(1, 8 * GIB, hugepages=(HugePagePool(2 * MIB, 256), HugePagePool(GIB, 0))),
    ),
    page_size=4096,
    hugepage_sizes=(2 * MIB, GIB),
)
DEVICES = memory_devices(TOPO, MemorySliceOptions(POOL))


def result(device: str, size: str | None, request: str = "mem") -> AllocatedMemory:
    return AllocatedMemory(request, POOL, device, {} if size is None else {"size": size})


def test_devices_of_the_model() -> None:
    assert {d.name: d.capacity for d in DEVICES} == {
        "memory-numa000": 8 * GIB - GIB - GIB,
        "memory-numa001": 8 * GIB - 512 * MIB,
        "hugepages-2mi-numa000": GIB,
        "hugepages-2mi-numa001": 512 * MIB,
        "hugepages-1gi-numa000": GIB,
    }


def test_memory_and_hugepages_on_the_chosen_nodes() -> None:
    a = prepare_memory(
        UID,
        [
            result("memory-numa001", "2Gi"),
            result("hugepages-2mi-numa001", "256Mi", "hp"),
            result("hugepages-1gi-numa000", "1Gi", "hp1g"),
        ],
        DEVICES,
        {},
        pool=POOL,
    )
    assert a.numa_nodes == (0, 1)
    assert a.memory_bytes == {1: 2 * GIB}
    assert a.hugepages == {2 * MIB: {1: 128}, GIB: {0: 1}}
    assert a.hugepage_limits == {2 * MIB: 256 * MIB, GIB: GIB}
    assert memory_env(a) == [
        f"DRAMEMORY_{UID}_memory=numanode:1,size:2Gi",
        f"DRAMEMORY_{UID}_hugepages_2Mi=numanode:1,size:256Mi",
        f"DRAMEMORY_{UID}_hugepages_1Gi=numanode:0,size:1Gi",
        f"DRAMEMORY_{UID}_NUMANodes=0,1",
    ]
    assert cdi_device_id(UID) == f"dra.k8s.io/memory=claim-{UID}"


def test_one_resource_on_two_nodes_gets_one_variable_per_node() -> None:
    a = prepare_memory(
        UID,
        [result("memory-numa000", "1Gi", "a"), result("memory-numa001", "1536Mi", "b")],
        DEVICES,
        {},
        pool=POOL,
    )
    assert memory_env(a) == [
        f"DRAMEMORY_{UID}_memory_numa0=numanode:0,size:1Gi",
        f"DRAMEMORY_{UID}_memory_numa1=numanode:1,size:1536Mi",
        f"DRAMEMORY_{UID}_NUMANodes=0,1",
    ]


def test_no_results_for_this_driver_is_an_empty_assignment() -> None:
    a = prepare_memory(UID, [], DEVICES, {}, pool=POOL)
    assert a == MemoryAssignment(UID)
    assert memory_env(a) == []


@pytest.mark.parametrize(
    ("res", "problem"),
    [
        (result("memory-numa000", "lots"), "invalid quantity 'lots'"),
        (result("memory-numa000", "1.5"), "not a whole number of bytes"),
        (result("memory-numa000", "0"), "is 0"),
        (result("memory-numa000", "1000"), "not a whole number of 4Ki pages"),
        (result("hugepages-2mi-numa000", "3Mi"), "not a whole number of 2Mi pages"),
        (result("memory-numa000", None), "no consumed capacity 'size'"),
        (result("memory-numa009", "1Mi"), "not a device of this node"),
        (AllocatedMemory("mem", "other-node", "memory-numa000", {"size": "1Mi"}), "pool"),
        (result("hugepages-2mi-numa001", "514Mi"), "over-request on device"),
    ],
    ids=[
        "word",
        "fraction",
        "zero",
        "unaligned",
        "unaligned-hp",
        "missing",
        "device",
        "pool",
        "over",
    ],
)
def test_bad_results_are_claim_errors(res: AllocatedMemory, problem: str) -> None:
    with pytest.raises(MemoryClaimError) as info:
        prepare_memory(UID, [res], DEVICES, {}, pool=POOL)
    assert problem in str(info.value)
    assert info.value.claim_uid == UID
    assert str(info.value).startswith(f"claim {UID}: ")


def test_over_request_counts_other_claims_and_same_claim_twice() -> None:
    held = {
        OTHER: prepare_memory(
            OTHER, [result("hugepages-1gi-numa000", "1Gi")], DEVICES, {}, pool=POOL
        )
    }
    with pytest.raises(MemoryClaimError, match="other claims hold 1Gi, capacity 1Gi"):
        prepare_memory(UID, [result("hugepages-1gi-numa000", "1Gi")], DEVICES, held, pool=POOL)
    # Two requests of one claim on one device add up.
    with pytest.raises(MemoryClaimError, match="asks 1Gi"):
        prepare_memory(
            UID,
            [
                result("hugepages-2mi-numa001", "256Mi", "a"),
                result("hugepages-2mi-numa001", "768Mi", "b"),
            ],
            DEVICES,
            {},
            pool=POOL,
        )


def test_prepare_is_idempotent_and_rejects_a_changed_allocation() -> None:
    results = [result("memory-numa000", "64Mi")]
    a = prepare_memory(UID, results, DEVICES, {}, pool=POOL)
    # Held at full device capacity by itself would still pass: it does not count itself twice.
    assert prepare_memory(UID, results, DEVICES, {UID: a}, pool=POOL) is a
    with pytest.raises(MemoryClaimError, match="different allocation"):
        prepare_memory(UID, [result("memory-numa001", "64Mi")], DEVICES, {UID: a}, pool=POOL)


def test_batch_threads_holdings_and_reports_per_claim() -> None:
    out = prepare_memory_claims(
        {
            OTHER: [result("hugepages-2mi-numa001", "512Mi")],
            UID: [result("hugepages-2mi-numa001", "2Mi")],
            "bad_uid": [result("memory-numa000", "1Mi")],
        },
        DEVICES,
        {},
        pool=POOL,
    )
    assert isinstance(out[OTHER], MemoryAssignment)
    assert isinstance(out[UID], MemoryClaimError)
    assert "over-request" in str(out[UID])
    assert isinstance(out["bad_uid"], MemoryClaimError)
    assert "not env-safe" in str(out["bad_uid"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(DEVICES), st.integers(min_value=1, max_value=600)),
        min_size=1,
        max_size=12,
    )
)
def test_holdings_never_exceed_capacity(asks: list[tuple[MemoryDevice, int]]) -> None:
    claims = {
        f"c{i}": [result(d.name, str(n * d.resource.page_size))] for i, (d, n) in enumerate(asks)
    }
    out = prepare_memory_claims(claims, DEVICES, {}, pool=POOL)
    held = [a for a in out.values() if isinstance(a, MemoryAssignment)]
    for device in DEVICES:
        assert sum(a.bytes_on(device.name) for a in held) <= device.capacity
    # A claim fails exactly when it would not fit next to the claims held before it.
    used = dict.fromkeys((d.name for d in DEVICES), 0)
    capacity = {d.name: d.capacity for d in DEVICES}
    for (device, n), got in zip(asks, out.values(), strict=True):
        name, size = device.name, n * device.resource.page_size
        fits = used[name] + size <= capacity[name]
        assert isinstance(got, MemoryAssignment) == fits
        if fits:
            used[name] += size


def test_one_page_device_has_no_step_and_validates(shared_dir: Path) -> None:
    topo = MemoryTopology(
        nodes=(MemoryNode(0, 4 * GIB, hugepages=(HugePagePool(GIB, 1),)),), page_size=4096
    )
    specs = build_memory_slice_specs(topo, MemorySliceOptions(POOL))
    huge = specs[1]["devices"][0]
    assert huge["capacity"]["size"]["requestPolicy"] == {
        "default": "1Gi",
        "validRange": {"min": "1Gi", "max": "1Gi"},
    }
    check = validator(shared_dir, "v1.34.0")
    for write in plan_slices(specs, [], driver="dra.memory", node=POOL).creates:
        assert not list(check.iter_errors(json.loads(json.dumps(write.body))))


def test_assignment_json_round_trip_and_errors() -> None:
    a = prepare_memory(
        UID,
        [result("memory-numa001", "2Gi"), result("hugepages-1gi-numa000", "1Gi", "hp")],
        DEVICES,
        {},
        pool=POOL,
    )
    doc = json.loads(json.dumps(assignment_to_json(a)))
    assert assignment_from_json(doc, origin="checkpoint") == a
    bad = json.loads(json.dumps(doc))
    bad["grants"][1]["size"] = "1Gi"
    with pytest.raises(
        InvalidValueError, match=r"checkpoint: grants\[1\]: size '1Gi' is not a count"
    ):
        assignment_from_json(bad, origin="checkpoint")
    bad["grants"][1]["kind"] = "cheese"
    with pytest.raises(InvalidValueError, match="kind 'cheese'"):
        assignment_from_json(bad, origin="checkpoint")
    with pytest.raises(InvalidValueError, match="no claimUID"):
        assignment_from_json({"grants": []}, origin="checkpoint")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=64 * 2**20),  # MemTotal kB
            st.integers(min_value=0, max_value=40000),  # 2 MiB pages
            st.integers(min_value=0, max_value=40),  # 1 GiB pages
            st.integers(min_value=0, max_value=5),  # surplus 2 MiB pages
        ),
        min_size=1,
        max_size=6,
    )
)
def test_nothing_is_counted_twice(nodes: list[tuple[int, int, int, int]]) -> None:
    topo = MemoryTopology(
        nodes=tuple(
            MemoryNode(
                i,
                kb * 1024,
                hugepages=(
                    HugePagePool(2 * MIB, two + surplus, surplus=surplus),
                    HugePagePool(GIB, one),
                ),
            )
            for i, (kb, two, one, surplus) in enumerate(nodes)
        ),
        page_size=4096,
    )
    devices = memory_devices(topo, MemorySliceOptions(POOL))
    for node in topo.nodes:
        mine = [d for d in devices if d.numa == node.id]
        hugepages = sum(d.capacity for d in mine if d.resource.hugetlb)
        assert hugepages == node.hugepage_bytes
        # Ordinary memory plus pools never exceeds what the node has (when pools fit in it).
        if node.hugepage_bytes <= node.total_bytes:
            assert sum(d.capacity for d in mine) <= node.total_bytes
    for spec in build_memory_slice_specs(topo, MemorySliceOptions(POOL)):
        for device in spec["devices"]:
            policy = device["capacity"]["size"]["requestPolicy"]
            value = parse_bytes(device["capacity"]["size"]["value"])
            step = parse_bytes(policy["validRange"].get("step", "0"))
            low = parse_bytes(policy["validRange"]["min"])
            default = parse_bytes(policy["default"])
            # The API's rules: min <= default <= max == value; max and default multiples of step;
            # min + step <= value.
            assert low <= default <= value == parse_bytes(policy["validRange"]["max"])
            if step:
                assert value % step == 0
                assert default % step == 0
                assert low + step <= value
