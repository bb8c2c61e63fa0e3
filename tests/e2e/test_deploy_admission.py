"""The chart's objects on the rig's real API server: server-side (dry-run) validation of every
object, the claim-config policy rejecting bad opaque configs (the message names the field), and the
slice-node policy refusing a driver token bound to a pod on one node a write of another
node's ResourceSlice. Uses a release name of its own (dracpu-e2e) so a real deployment is
left alone; no kubelet or driver needed."""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.chart import MANIFESTS, Chart, build_helm
from tests.e2e.node_agent import kube_client
from tests.e2e.rig import Rig

pytestmark = pytest.mark.e2e

NAME = "dracpu-e2e"
NS = "kube-system"
VAP = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
VAPB = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"
RBAC = "/apis/rbac.authorization.k8s.io/v1"
RESOURCE = "/apis/resource.k8s.io/v1"
PATHS = {
    "ValidatingAdmissionPolicy": VAP,
    "ValidatingAdmissionPolicyBinding": VAPB,
    "ClusterRole": f"{RBAC}/clusterroles",
    "ClusterRoleBinding": f"{RBAC}/clusterrolebindings",
    "ServiceAccount": f"/api/v1/namespaces/{NS}/serviceaccounts",
}


@pytest.fixture(scope="module")
def chart() -> Chart:
    return Chart(helm=build_helm())


@pytest.fixture(scope="module")
def installed(rig: Rig, chart: Chart) -> Iterator[httpx.Client]:
    """The chart's RBAC, ServiceAccount and admission policies (no DaemonSet), removed after."""
    objects = chart.render(f"fullnameOverride={NAME}")
    wanted = [o for o in objects if o["kind"] in PATHS]
    with kube_client(rig) as kube:
        created: list[str] = []
        try:
            for obj in wanted:
                path = PATHS[obj["kind"]]
                r = kube.post(path, json=obj)
                assert r.status_code == 201, r.text
                created.append(f"{path}/{obj['metadata']['name']}")
            yield kube
        finally:
            for path in reversed(created):
                kube.delete(path)


def claim(params: Any) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"generateName": "vap-"},
        "spec": {
            "devices": {
                "requests": [{"name": "cpus", "exactly": {"deviceClassName": "dra.cpu"}}],
                "config": [
                    {"requests": ["cpus"], "opaque": {"driver": "dra.cpu", "parameters": params}}
                ],
            }
        },
    }


@pytest.fixture
def namespace(installed: httpx.Client) -> Iterator[str]:
    name = f"vap-{uuid.uuid4().hex[:8]}"
    r = installed.post("/api/v1/namespaces", json={"metadata": {"name": name}})
    assert r.status_code == 201, r.text
    yield name
    installed.delete(f"/api/v1/namespaces/{name}")


def message(r: httpx.Response) -> str:
    """The Status message of a refused request."""
    text: str = r.json().get("message", r.text)
    return text


def wait_rejected(kube: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST until the policy is active (policies load asynchronously), at most 30 s."""
    deadline = time.monotonic() + 30
    while True:
        r = kube.post(path, json=body)
        if r.status_code != 201 or time.monotonic() > deadline:
            return r
        kube.delete(f"{path}/{r.json()['metadata']['name']}")
        time.sleep(0.5)


def test_claims_with_invalid_opaque_config_are_rejected(
    installed: httpx.Client, namespace: str
) -> None:
    claims = f"{RESOURCE}/namespaces/{namespace}/resourceclaims"
    bad = claim({"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": "5-2"}})
    r = wait_rejected(installed, claims, bad)
    assert r.status_code == 422, r.text
    assert 'spec.devices.config[].opaque.parameters.cpuConfig.cpuset: "5-2"' in message(r)
    for params, fragment in (
        ({"apiVersion": "v1beta9"}, 'apiVersion: unsupported value "v1beta9"'),
        ({"apiVersion": "v1alpha1", "cpuConfig": {"cpus": "1"}}, "cpuConfig.cpus: unknown field"),
    ):
        r = installed.post(claims, json=claim(params))
        assert r.status_code == 422, r.text
        assert fragment in message(r)
    templates = f"{RESOURCE}/namespaces/{namespace}/resourceclaimtemplates"
    template = {"metadata": {"generateName": "vap-"}, "spec": {"spec": bad["spec"]}}
    r = installed.post(templates, json=template)
    assert r.status_code == 422, r.text
    assert "spec.spec.devices.config[].opaque.parameters.cpuConfig.cpuset" in message(r)
    for good in (
        {"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": "2-5"}},
        {"apiVersion": "v1alpha1", "cpuConfig": {"fullPCPUsOnly": True, "strategy": "spread"}},
    ):
        r = installed.post(claims, json=claim(good))
        assert r.status_code == 201, r.text


def slice_body(node: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"generateName": "vap-"},
        "spec": {
            "driver": "dra.cpu",
            "nodeName": node,
            "pool": {"name": f"vap-{node}", "generation": 1, "resourceSliceCount": 1},
            "devices": [],
        },
    }


def test_driver_token_cannot_write_another_nodes_slices(rig: Rig, installed: httpx.Client) -> None:
    """A token bound to a pod on the rig's node (what the DaemonSet pod gets) may write that
    node's slices and is refused another node's, by the slice-node policy."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"vap-{uuid.uuid4().hex[:8]}", "namespace": NS},
        "spec": {
            "serviceAccountName": NAME,
            "nodeName": rig.node_name,
            "containers": [{"name": "c", "image": rig.pause_image}],
        },
    }
    r = installed.post(f"/api/v1/namespaces/{NS}/pods", json=pod)
    assert r.status_code == 201, r.text
    created = r.json()
    slices: list[str] = []
    try:
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 600,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": created["metadata"]["name"],
                    "uid": created["metadata"]["uid"],
                },
            },
        }
        r = installed.post(f"/api/v1/namespaces/{NS}/serviceaccounts/{NAME}/token", json=request)
        assert r.status_code == 201, r.text
        token = r.json()["status"]["token"]
        ctx = ssl.create_default_context(cafile=str(rig.ca_cert))
        with httpx.Client(
            base_url=rig.apiserver_url,
            verify=ctx,
            timeout=15.0,
            headers={"Authorization": f"Bearer {token}"},
        ) as driver:
            other = wait_rejected(driver, f"{RESOURCE}/resourceslices", slice_body("other-node"))
            refusal = f"on node {rig.node_name} may write only that node's ResourceSlices"
            assert other.status_code == 403, other.text
            assert refusal in message(other), message(other)
            own = driver.post(f"{RESOURCE}/resourceslices", json=slice_body(rig.node_name))
            assert own.status_code == 201, own.text
            slices.append(own.json()["metadata"]["name"])
            # spec.nodeName is immutable (422 before any policy runs), so the writes the policy
            # must refuse are updates and deletes of a slice another node's driver owns.
            r = installed.post(f"{RESOURCE}/resourceslices", json=slice_body("other-node"))
            assert r.status_code == 201, r.text
            foreign = r.json()
            slices.append(foreign["metadata"]["name"])
            path = f"{RESOURCE}/resourceslices/{foreign['metadata']['name']}"
            bumped = {**foreign, "spec": {**foreign["spec"], "pool": {**foreign["spec"]["pool"]}}}
            bumped["spec"]["pool"]["generation"] = 2
            for r in (driver.put(path, json=bumped), driver.delete(path)):
                assert r.status_code == 403, r.text
                assert refusal in message(r), message(r)
            assert installed.get(path).json()["spec"]["pool"]["generation"] == 1
            r = driver.delete(f"{RESOURCE}/resourceslices/{own.json()['metadata']['name']}")
            assert r.status_code == 200, r.text
            slices.remove(own.json()["metadata"]["name"])
    finally:
        for name in slices:
            installed.delete(f"{RESOURCE}/resourceslices/{name}")
        installed.delete(
            f"/api/v1/namespaces/{NS}/pods/{created['metadata']['name']}",
            params={"gracePeriodSeconds": "0"},
        )


def test_manifests_file_is_valid_yaml_for_the_server(rig: Rig, chart: Chart) -> None:
    """deploy/dracpu.yaml's objects, and the memory driver's DeviceClasses and ClusterRole,
    pass server-side dry-run creation one by one."""
    paths = {
        **PATHS,
        "ConfigMap": f"/api/v1/namespaces/{NS}/configmaps",
        "DaemonSet": f"/apis/apps/v1/namespaces/{NS}/daemonsets",
        "DeviceClass": f"{RESOURCE}/deviceclasses",
    }
    # With the memory driver on: its DeviceClasses and the ClusterRole naming dra.memory.
    memory = [
        o
        for o in chart.render("memoryDriver.enabled=true")
        if o["kind"] in ("DeviceClass", "ClusterRole")
    ]
    assert len(memory) == 5, [o["metadata"]["name"] for o in memory]
    with kube_client(rig) as kube:
        for obj in [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d] + memory:
            r = kube.post(paths[obj["kind"]], json=obj, params={"dryRun": "All"})
            assert r.status_code in (201, 409), f"{obj['kind']}: {r.text}"
