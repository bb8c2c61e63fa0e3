"""The admission policies' CEL, evaluated offline (cel-python) on good and bad objects.

The policies come from the chart as rendered by helm, so these are the shipped expressions.
The rig e2e sends the same kinds of objects to a real API server.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.deploy.chart import Chart, find
from tests.deploy.vap import Policy

SA_USER = "system:serviceaccount:kube-system:dracpu"
NODE_KEY = "authentication.kubernetes.io/node-name"


@pytest.fixture(scope="module")
def objects(chart: Chart) -> list[dict[str, Any]]:
    return chart.render()


@pytest.fixture(scope="module")
def claim_policy(objects: list[dict[str, Any]]) -> Policy:
    return Policy(find(objects, "ValidatingAdmissionPolicy", "dracpu-claim-config"))


@pytest.fixture(scope="module")
def slice_policy(objects: list[dict[str, Any]]) -> Policy:
    return Policy(find(objects, "ValidatingAdmissionPolicy", "dracpu-slice-node"))


def claim(*params: Any, driver: str = "dra.cpu") -> dict[str, Any]:
    """A ResourceClaim (upstream's grouped example shape) with one config entry per params."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "c", "namespace": "default"},
        "spec": {
            "devices": {
                "requests": [{"name": "cpus", "exactly": {"deviceClassName": "dra.cpu"}}],
                "config": [
                    {"requests": ["cpus"], "opaque": {"driver": driver, "parameters": p}}
                    for p in params
                ],
            }
        },
    }


def template(*params: Any) -> dict[str, Any]:
    spec = claim(*params)["spec"]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "t", "namespace": "default"},
        "spec": {"spec": spec},
    }


def v1(**cpu_config: Any) -> dict[str, Any]:
    return {"apiVersion": "v1alpha1", "cpuConfig": cpu_config}


GOOD = [
    pytest.param(v1(cpuset="2-5"), id="upstream-cpuset"),
    pytest.param(v1(cpuset="0,4-6,8"), id="list"),
    pytest.param(v1(cpuset="7-7"), id="one-cpu-range"),
    pytest.param({"apiVersion": "v1alpha1"}, id="no-cpuConfig"),
    pytest.param(v1(), id="empty-cpuConfig"),
    pytest.param(
        v1(fullPCPUsOnly=True, distributeAcrossNUMA=False, strategy="spread"), id="dracpu-options"
    ),
    pytest.param(v1(cpuset="0-3", strategy="packed"), id="cpuset-and-strategy"),
    pytest.param(v1(fullPCPUsOnly=None, strategy=None), id="null-options-are-absent"),
]

BAD = [
    pytest.param(
        "cpus", "opaque.parameters: the dra.cpu opaque config must be an object", id="not-an-object"
    ),
    pytest.param(
        {"cpuConfig": {"cpuset": "1"}}, "opaque.parameters.apiVersion: required", id="no-apiVersion"
    ),
    pytest.param(
        {"apiVersion": "v1beta1"},
        'opaque.parameters.apiVersion: unsupported value "v1beta1"',
        id="wrong-apiVersion",
    ),
    pytest.param(
        {"apiVersion": 1},
        "opaque.parameters.apiVersion: must be a string",
        id="apiVersion-not-string",
    ),
    pytest.param(
        {"apiVersion": "v1alpha1", "cpuconfig": {}},
        "opaque.parameters.cpuconfig: unknown field",
        id="unknown-top-field",
    ),
    pytest.param(
        {"apiVersion": "v1alpha1", "cpuConfig": "0-3"},
        "opaque.parameters.cpuConfig: must be an object",
        id="cpuConfig-not-object",
    ),
    pytest.param(
        v1(cpuSet="0-3"),
        "opaque.parameters.cpuConfig.cpuSet: unknown field",
        id="unknown-cpuConfig-field",
    ),
    pytest.param(v1(cpuset="0-"), 'cpuConfig.cpuset: "0-" is not a cpuset', id="open-range"),
    pytest.param(v1(cpuset="5-2"), 'cpuConfig.cpuset: "5-2" is not a cpuset', id="descending"),
    pytest.param(v1(cpuset="1, 2"), 'cpuConfig.cpuset: "1, 2" is not a cpuset', id="space"),
    pytest.param(v1(cpuset=""), 'cpuConfig.cpuset: "" is not a cpuset', id="empty"),
    pytest.param(v1(cpuset="0-3,"), 'cpuConfig.cpuset: "0-3," is not a cpuset', id="trailing"),
    pytest.param(v1(cpuset="a"), 'cpuConfig.cpuset: "a" is not a cpuset', id="letters"),
    pytest.param(
        v1(cpuset="123456"), 'cpuConfig.cpuset: "123456" is not a cpuset', id="too-many-digits"
    ),
    pytest.param(v1(cpuset=3), "cpuConfig.cpuset: must be a string", id="cpuset-number"),
    pytest.param(
        v1(fullPCPUsOnly="yes"),
        "cpuConfig.fullPCPUsOnly: must be true or false",
        id="bool-field-string",
    ),
    pytest.param(
        v1(distributeAcrossNUMA=1),
        "cpuConfig.distributeAcrossNUMA: must be true or false",
        id="bool-field-int",
    ),
    pytest.param(
        v1(strategy="random"), 'cpuConfig.strategy: must be "packed" or "spread"', id="strategy"
    ),
    pytest.param(
        v1(strategy=3), 'cpuConfig.strategy: must be "packed" or "spread"', id="strategy-int"
    ),
]


# Refused at admission, like upstream's cpuset parser, though dracpu's parser would take them.
STRICTER_THAN_DAEMON = {"space"}


@pytest.mark.parametrize("params", GOOD)
def test_valid_config_is_admitted(claim_policy: Policy, params: Any) -> None:
    for resource, obj in (
        ("resourceclaims", claim(params)),
        ("resourceclaimtemplates", template(params)),
    ):
        verdict = claim_policy.evaluate(operation="CREATE", resource=resource, obj=obj)
        assert verdict.applies
        assert verdict.denied == ()


@pytest.mark.parametrize(("params", "message"), BAD)
def test_invalid_config_is_rejected_naming_the_field(
    claim_policy: Policy, params: Any, message: str
) -> None:
    verdict = claim_policy.evaluate(
        operation="CREATE", resource="resourceclaims", obj=claim(params)
    )
    assert len(verdict.denied) == 1, verdict.denied
    assert verdict.denied[0].startswith("spec.devices.config[].opaque.parameters")
    assert message in verdict.denied[0]
    verdict = claim_policy.evaluate(
        operation="CREATE", resource="resourceclaimtemplates", obj=template(params)
    )
    assert len(verdict.denied) == 1, verdict.denied
    assert verdict.denied[0].startswith("spec.spec.devices.config[].opaque.parameters")
    assert message in verdict.denied[0]


def test_other_drivers_configs_and_claims_without_config_are_not_ours(claim_policy: Policy) -> None:
    other = claim({"anything": "goes"}, driver="gpu.example.com")
    no_config = claim()
    del no_config["spec"]["devices"]["config"]
    no_devices = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "spec": {}}
    for obj in (other, no_config, no_devices):
        verdict = claim_policy.evaluate(operation="CREATE", resource="resourceclaims", obj=obj)
        assert verdict.denied == ()


def test_one_bad_entry_among_good_ones_is_found(claim_policy: Policy) -> None:
    obj = claim(v1(cpuset="0-1"), v1(cpuset="9-3"), v1(strategy="spread"))
    verdict = claim_policy.evaluate(operation="CREATE", resource="resourceclaims", obj=obj)
    assert len(verdict.denied) == 1
    assert '"9-3" is not a cpuset' in verdict.denied[0]


def test_several_faults_give_one_message_each(claim_policy: Policy) -> None:
    obj = claim({"apiVersion": "v2", "extra": 1, "cpuConfig": {"cpuset": "x", "strategy": "y"}})
    verdict = claim_policy.evaluate(operation="CREATE", resource="resourceclaims", obj=obj)
    assert len(verdict.denied) == 4
    joined = "\n".join(verdict.denied)
    for fragment in (
        "parameters.extra: unknown field",
        'unsupported value "v2"',
        '"x" is not a cpuset',
        "strategy: must be",
    ):
        assert fragment in joined


def test_updates_that_keep_the_spec_are_never_refused(claim_policy: Policy) -> None:
    """A claim created before the policy (invalid config) must still get finalizers removed."""
    old = claim(v1(cpuset="bad"))
    new = copy.deepcopy(old)
    new["metadata"]["finalizers"] = []
    verdict = claim_policy.evaluate(operation="UPDATE", resource="resourceclaims", obj=new, old=old)
    assert not verdict.applies
    changed = copy.deepcopy(old)
    changed["spec"]["devices"]["config"][0]["opaque"]["parameters"]["cpuConfig"]["cpuset"] = "z"
    verdict = claim_policy.evaluate(
        operation="UPDATE", resource="resourceclaims", obj=changed, old=old
    )
    assert verdict.applies
    assert len(verdict.denied) == 1


def slice_obj(node: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "driver": "dra.cpu",
        "pool": {"name": node or "all", "generation": 1, "resourceSliceCount": 1},
        "devices": [],
    }
    if node is None:
        spec["allNodes"] = True
    else:
        spec["nodeName"] = node
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": "s"},
        "spec": spec,
    }


def driver(policy: Policy, operation: str, obj: Any, old: Any = None, node: str | None = "n1"):  # type: ignore[no-untyped-def]
    extra = {NODE_KEY: [node]} if node is not None else {}
    return policy.evaluate(
        operation=operation,
        resource="resourceslices",
        obj=obj,
        old=old,
        username=SA_USER,
        extra=extra,
    )


def test_driver_writes_its_own_nodes_slices(slice_policy: Policy) -> None:
    mine = slice_obj("n1")
    for operation, obj, old in (
        ("CREATE", mine, None),
        ("UPDATE", mine, mine),
        ("DELETE", None, mine),
    ):
        verdict = driver(slice_policy, operation, obj, old)
        assert verdict.applies
        assert verdict.denied == ()


def test_driver_cannot_write_another_nodes_slices(slice_policy: Policy) -> None:
    theirs, mine = slice_obj("n2"), slice_obj("n1")
    for operation, obj, old in (
        ("CREATE", theirs, None),
        ("UPDATE", theirs, theirs),
        ("UPDATE", mine, theirs),
        ("UPDATE", theirs, mine),
        ("DELETE", None, theirs),
    ):
        verdict = driver(slice_policy, operation, obj, old)
        assert len(verdict.denied) == 1, (operation, verdict)
        assert "on node n1 may write only that node's ResourceSlices" in verdict.denied[0]
        assert "node n2" in verdict.denied[0]


def test_driver_cannot_write_cluster_wide_slices(slice_policy: Policy) -> None:
    verdict = driver(slice_policy, "CREATE", slice_obj(None))
    assert verdict.denied == (
        "spec.nodeName: the dracpu service account on node n1 may write only that node's "
        "ResourceSlices, not one of no node (spec.nodeName unset)",
    )


def test_token_without_node_is_refused(slice_policy: Policy) -> None:
    verdict = driver(slice_policy, "CREATE", slice_obj("n1"), node=None)
    assert any("pod-bound token" in m for m in verdict.denied)


def test_other_users_are_not_restricted(slice_policy: Policy) -> None:
    for user in ("system:node:n1", "system:serviceaccount:kube-system:other", "admin"):
        verdict = slice_policy.evaluate(
            operation="CREATE", resource="resourceslices", obj=slice_obj("n2"), username=user
        )
        assert not verdict.applies


def test_service_account_user_follows_release_and_namespace(chart: Chart) -> None:
    objects = chart.render("fullnameOverride=cpu-driver")
    policy = find(objects, "ValidatingAdmissionPolicy", "cpu-driver-slice-node")
    condition = policy["spec"]["matchConditions"][0]["expression"]
    assert '"system:serviceaccount:kube-system:cpu-driver"' in condition


def test_policy_and_daemon_parser_agree() -> None:
    """What admission accepts the daemon's parser accepts, and what the parser refuses
    admission refuses (so bad configs fail at create, not at pod start)."""
    claims = pytest.importorskip(
        "dracpu.core.claims", reason="the daemon's claim parser is not on this branch yet"
    )
    for good in GOOD:
        claims.parse_cpu_config(good.values[0], claim="default/c")
    for bad in BAD:
        params = bad.values[0]
        if bad.id in STRICTER_THAN_DAEMON:
            claims.parse_cpu_config(params, claim="default/c")
            continue
        with pytest.raises(claims.ClaimError):
            claims.parse_cpu_config(params, claim="default/c")
