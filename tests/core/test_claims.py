"""ResourceClaim parsing: quantities, allocation results, the v1alpha1 opaque config, errors."""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

import pytest

from dracpu.core.allocator import AllocationOptions, Strategy
from dracpu.core.claims import (
    ClaimError,
    ClaimRef,
    Consumer,
    CpuConfig,
    DeviceResult,
    parse_claim,
    parse_cpu_config,
    parse_cpu_count,
    parse_quantity,
)
from dracpu.core.cpuset import CpuSet
from dracpu.errors import DracpuError, InvalidValueError

POOL = "node-1"


def claim_json(
    results: list[dict[str, Any]] | None = None,
    config: list[dict[str, Any]] | None = None,
    *,
    uid: str = "uid-1",
) -> dict[str, Any]:
    """A resource.k8s.io/v1 ResourceClaim as the API returns it (upstream docs' example)."""
    if results is None:
        results = [
            {
                "request": "req-cpu",
                "driver": "dra.cpu",
                "pool": POOL,
                "device": "cpudevnuma000",
                "consumedCapacity": {"dra.cpu/cpu": "4"},
                "shareID": "3f1c7e1a-0000-4000-8000-000000000001",
            }
        ]
    devices: dict[str, Any] = {"results": results}
    if config is not None:
        devices["config"] = config
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"namespace": "default", "name": "claim-a", "uid": uid},
        "spec": {"devices": {"requests": [{"name": "req-cpu"}]}},
        "status": {
            "allocation": {"devices": devices},
            "reservedFor": [{"resource": "pods", "name": "pod-a", "uid": "pod-uid-1"}],
        },
    }


def opaque(
    parameters: Any, *, requests: list[str] | None = None, source: str = "FromClaim"
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "source": source,
        "opaque": {"driver": "dra.cpu", "parameters": parameters},
    }
    entry["requests"] = ["req-cpu"] if requests is None else requests
    return entry


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4", 4),
        ("4000m", 4),
        ("1500m", Fraction(3, 2)),
        ("0.5", Fraction(1, 2)),
        ("1Ki", 1024),
        ("2k", 2000),
        ("1e3", 1000),
        ("+7", 7),
        ("-2", -2),
        ("500000u", Fraction(1, 2)),
    ],
)
def test_quantities(text: str, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "four", "4x", "1.2.3", "4 m", "1e400", "Ki"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(InvalidValueError, match="quantity"):
        parse_quantity(text, origin="test")


@pytest.mark.parametrize(("text", "count"), [("4", 4), ("4000m", 4), ("16", 16), ("2e1", 20)])
def test_cpu_counts(text: str, count: int) -> None:
    assert parse_cpu_count(text, claim="ns/c", request="r") == count


@pytest.mark.parametrize(
    ("text", "reason"),
    [("1500m", "not a whole number"), ("0", "must be positive"), ("-2", "must be positive")],
)
def test_bad_cpu_counts_name_claim_request_and_value(text: str, reason: str) -> None:
    with pytest.raises(ClaimError, match=reason) as info:
        parse_cpu_count(text, claim="ns/c", request="req-cpu", device="cpudevnuma000")
    message = str(info.value)
    assert "ResourceClaim ns/c" in message
    assert "'req-cpu'" in message
    assert repr(text) in message
    assert isinstance(info.value, DracpuError)


def test_parse_grouped_claim() -> None:
    claim = parse_claim(claim_json(), pool=POOL)
    assert claim.ref == ClaimRef("default", "claim-a", "uid-1")
    assert claim.results == (
        DeviceResult(
            request="req-cpu",
            pool=POOL,
            device="cpudevnuma000",
            cpus=4,
            share_id="3f1c7e1a-0000-4000-8000-000000000001",
        ),
    )
    assert claim.reserved_for == (Consumer("pods", "pod-a", "pod-uid-1"),)


def test_other_drivers_results_and_configs_are_ignored() -> None:
    obj = claim_json(
        [
            {"request": "gpu", "driver": "gpu.example.com", "pool": "other", "device": "gpu0"},
            {"request": "cpus", "driver": "dra.cpu", "pool": POOL, "device": "cpudev003"},
        ],
        [{"source": "FromClass", "opaque": {"driver": "gpu.example.com", "parameters": {}}}],
    )
    claim = parse_claim(obj, pool=POOL)
    assert [(r.request, r.device, r.cpus) for r in claim.results] == [("cpus", "cpudev003", None)]


def test_claim_without_our_results_parses_empty() -> None:
    obj = claim_json([{"request": "g", "driver": "gpu.example.com", "pool": "p", "device": "d"}])
    assert parse_claim(obj, pool=POOL).results == ()


def test_opaque_config_per_request_and_subrequest() -> None:
    params = {
        "apiVersion": "v1alpha1",
        "cpuConfig": {
            "cpuset": "2-5",
            "fullPCPUsOnly": True,
            "distributeAcrossNUMA": False,
            "strategy": "spread",
        },
    }
    results = [
        {
            "request": "req-cpu/small",
            "driver": "dra.cpu",
            "pool": POOL,
            "device": "cpudevmachine",
            "consumedCapacity": {"dra.cpu/cpu": "4"},
        }
    ]
    claim = parse_claim(claim_json(results, [opaque(params)]), pool=POOL)
    config = claim.results[0].config
    assert config == CpuConfig(CpuSet.parse("2-5"), True, False, Strategy.SPREAD)
    assert config.options(AllocationOptions(distribute_across_numa=True)) == AllocationOptions(
        full_pcpus_only=True, distribute_across_numa=False, strategy=Strategy.SPREAD
    )
    assert CpuConfig().options(AllocationOptions(full_pcpus_only=True)).full_pcpus_only


def test_upstream_example_claim_parses() -> None:
    """The fully allocated claim of upstream's docs/user/opaque-cpuset-overrides.md."""
    obj = claim_json(
        [
            {
                "request": "cpu-request-1",
                "driver": "dra.cpu",
                "pool": "test-node",
                "device": "cpudevmachine",
                "consumedCapacity": {"dra.cpu/cpu": "4"},
            }
        ],
        [
            opaque(
                {"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": "2-5"}},
                requests=["cpu-request-1"],
            )
        ],
    )
    claim = parse_claim(obj, pool="test-node")
    assert claim.results[0].config.cpuset == CpuSet.parse("2-5")
    assert claim.results[0].cpus == 4


BAD_CONFIGS = [
    ("unknown-top", {"apiVersion": "v1alpha1", "cpuConfig": {}, "extra": 1}, "unknown field"),
    ("unknown-inner", {"apiVersion": "v1alpha1", "cpuConfig": {"cpus": "1"}}, "cpuConfig.cpus"),
    ("no-version", {"cpuConfig": {"cpuset": "1"}}, "unsupported apiVersion None"),
    ("bad-version", {"apiVersion": "v2", "cpuConfig": {}}, "unsupported apiVersion 'v2'"),
    ("bad-cpuset", {"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": "3-1"}}, "'3-1'"),
    ("empty-cpuset", {"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": ""}}, "empty"),
    ("cpuset-type", {"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": 4}}, "must be a string"),
    ("flag-type", {"apiVersion": "v1alpha1", "cpuConfig": {"fullPCPUsOnly": "yes"}}, "true or"),
    ("strategy", {"apiVersion": "v1alpha1", "cpuConfig": {"strategy": "dense"}}, "'dense'"),
    ("not-object", ["v1alpha1"], "must be an object"),
    ("body-type", {"apiVersion": "v1alpha1", "cpuConfig": "2-5"}, "cpuConfig must be"),
]


@pytest.mark.parametrize(
    ("params", "reason"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_opaque_config(params: Any, reason: str) -> None:
    with pytest.raises(ClaimError, match="opaque config") as info:
        parse_claim(claim_json(config=[opaque(params)]), pool=POOL)
    assert reason in str(info.value)
    assert "ResourceClaim default/claim-a (uid uid-1) request 'req-cpu'" in str(info.value)


def test_config_from_class_is_rejected() -> None:
    params = {"apiVersion": "v1alpha1", "cpuConfig": {}}
    with pytest.raises(ClaimError, match="DeviceClass"):
        parse_claim(claim_json(config=[opaque(params, source="FromClass")]), pool=POOL)


def test_config_without_requests_targets_every_request() -> None:
    # kube-scheduler clears `requests` when a claim config names all of the claim's requests.
    params = {"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": "3"}}
    claim = parse_claim(claim_json(config=[opaque(params, requests=[])]), pool=POOL)
    assert [str(r.config.cpuset) for r in claim.results] == ["3"]


def test_cpuset_config_without_requests_in_a_two_request_claim_is_rejected() -> None:
    results = [
        {"request": name, "driver": "dra.cpu", "pool": POOL, "device": f"cpudev00{i}"}
        for i, name in enumerate(["a", "b"])
    ]
    params = {"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": "3"}}
    with pytest.raises(ClaimError, match="exactly one"):
        parse_claim(claim_json(results, config=[opaque(params, requests=[])]), pool=POOL)


def test_two_configs_for_one_request_are_rejected() -> None:
    params = {"apiVersion": "v1alpha1", "cpuConfig": {}}
    with pytest.raises(ClaimError, match="more than one") as info:
        parse_claim(claim_json(config=[opaque(params), opaque(params)]), pool=POOL)
    assert info.value.request == "req-cpu"


def test_cpuset_config_for_two_requests_is_rejected() -> None:
    params = {"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": "1-2"}}
    with pytest.raises(ClaimError, match="exactly one"):
        parse_claim(claim_json(config=[opaque(params, requests=["a", "b"])]), pool=POOL)


def test_options_config_may_name_several_requests() -> None:
    params = {"apiVersion": "v1alpha1", "cpuConfig": {"strategy": "spread"}}
    claim = parse_claim(claim_json(config=[opaque(params, requests=["req-cpu", "b"])]), pool=POOL)
    assert claim.results[0].config.strategy is Strategy.SPREAD


def _mutated(path: list[Any], value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(claim_json())
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return obj


RESULT = ["status", "allocation", "devices", "results", 0]
BAD_CLAIMS = [
    ("not-allocated", _mutated(["status", "allocation"], KeyError), "not allocated"),
    ("no-uid", _mutated(["metadata", "uid"], KeyError), "metadata.uid"),
    ("other-pool", _mutated([*RESULT, "pool"], "node-2"), "pool 'node-2', not this node's"),
    ("fraction", _mutated([*RESULT, "consumedCapacity", "dra.cpu/cpu"], "1500m"), "1500m"),
    ("no-device", _mutated([*RESULT, "device"], KeyError), "device is missing"),
    ("results-type", _mutated(["status", "allocation", "devices", "results"], {}), "not a list"),
    ("capacity-type", _mutated([*RESULT, "consumedCapacity"], "4"), "consumedCapacity"),
]


@pytest.mark.parametrize(
    ("obj", "reason"), [c[1:] for c in BAD_CLAIMS], ids=[c[0] for c in BAD_CLAIMS]
)
def test_bad_claims_name_the_claim(obj: dict[str, Any], reason: str) -> None:
    with pytest.raises(ClaimError) as info:
        parse_claim(obj, pool=POOL)
    assert reason in str(info.value)
    assert "default/claim-a" in str(info.value)


def test_quantity_1500m_error_is_one_line_naming_everything() -> None:
    obj = _mutated([*RESULT, "consumedCapacity", "dra.cpu/cpu"], "1500m")
    with pytest.raises(ClaimError) as info:
        parse_claim(obj, pool=POOL)
    assert str(info.value) == (
        "ResourceClaim default/claim-a (uid uid-1) request 'req-cpu': dra.cpu/cpu of device "
        "cpudevnuma000 is '1500m', not a whole number of CPUs"
    )


def test_parse_cpu_config_direct() -> None:
    assert parse_cpu_config({"apiVersion": "v1alpha1"}, claim="c") == CpuConfig()
