"""The rig's kube-scheduler allocates a ResourceClaim with consumable capacity and binds the pod."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.kube import wait_for
from tests.e2e.rig import Rig

pytestmark = pytest.mark.e2e

RESOURCE = "/apis/resource.k8s.io/v1"
NS = "default"


class Created:
    """Objects created by a test, deleted at the end (pods forcibly: their claims name drivers
    that no kubelet plugin serves, so the kubelet never runs them)."""

    def __init__(self, kube: httpx.Client) -> None:
        self.kube = kube
        self.paths: list[str] = []

    def post(self, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.kube.post(collection, json=body)
        assert r.status_code == 201, f"POST {collection}: {r.status_code} {r.text}"
        obj: dict[str, Any] = r.json()
        self.paths.append(f"{collection}/{obj['metadata']['name']}")
        return obj

    def cleanup(self) -> None:
        for path in reversed(self.paths):
            self.kube.delete(path, params={"gracePeriodSeconds": "0"})


@pytest.fixture
def created(kube: httpx.Client) -> Iterator[Created]:
    c = Created(kube)
    try:
        yield c
    finally:
        c.cleanup()


def test_scheduler_allocates_claim_and_binds_pod(
    rig: Rig, kube: httpx.Client, created: Created
) -> None:
    tag = uuid.uuid4().hex[:8]
    driver = f"s{tag}.smoke.dracpu.dev"
    created.post(
        f"{RESOURCE}/deviceclasses",
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": f"smoke-{tag}"},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]},
        },
    )
    devices = [
        {
            "name": f"numa{n}",
            "allowMultipleAllocations": True,
            "attributes": {"numaNode": {"int": n}},
            "capacity": {"cpu": {"value": "4"}},
        }
        for n in (0, 1)
    ]
    created.post(
        f"{RESOURCE}/resourceslices",
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": f"smoke-{tag}"},
            "spec": {
                "driver": driver,
                "nodeName": rig.node_name,
                "pool": {"name": rig.node_name, "generation": 1, "resourceSliceCount": 1},
                "devices": devices,
            },
        },
    )
    claim = created.post(
        f"{RESOURCE}/namespaces/{NS}/resourceclaims",
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": f"smoke-{tag}"},
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "cpus",
                            "exactly": {
                                "deviceClassName": f"smoke-{tag}",
                                "selectors": [
                                    {
                                        "cel": {
                                            "expression": (
                                                f'device.attributes["{driver}"].numaNode == 1'
                                            )
                                        }
                                    }
                                ],
                                "capacity": {"requests": {"cpu": "3"}},
                            },
                        }
                    ]
                }
            },
        },
    )
    pod = created.post(
        f"/api/v1/namespaces/{NS}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"smoke-{tag}"},
            "spec": {
                "resourceClaims": [
                    {"name": "cpus", "resourceClaimName": claim["metadata"]["name"]}
                ],
                "containers": [
                    {
                        "name": "c",
                        "image": rig.busybox_image,
                        "command": ["sleep", "3600"],
                        "resources": {"claims": [{"name": "cpus"}]},
                    }
                ],
            },
        },
    )

    def bound() -> str | None:
        r = kube.get(f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}")
        node: str | None = r.json()["spec"].get("nodeName")
        return node

    assert wait_for("pod to be bound", bound, timeout=60) == rig.node_name

    r = kube.get(f"{RESOURCE}/namespaces/{NS}/resourceclaims/{claim['metadata']['name']}")
    status = r.json()["status"]
    results = status["allocation"]["devices"]["results"]
    assert len(results) == 1
    (result,) = results
    assert result["driver"] == driver
    assert result["pool"] == rig.node_name
    assert result["device"] == "numa1"  # the CEL selector excludes numa0
    assert result["request"] == "cpus"
    assert result["consumedCapacity"] == {"cpu": "3"}
    assert result.get("shareID")
    node_terms = status["allocation"]["nodeSelector"]["nodeSelectorTerms"]
    assert rig.node_name in str(node_terms)
    assert [c["uid"] for c in status["reservedFor"]] == [pod["metadata"]["uid"]]


def test_controller_manager_creates_claim_from_template(
    rig: Rig, kube: httpx.Client, created: Created
) -> None:
    tag = uuid.uuid4().hex[:8]
    driver = f"t{tag}.smoke.dracpu.dev"
    created.post(
        f"{RESOURCE}/deviceclasses",
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": f"tmpl-{tag}"},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]},
        },
    )
    created.post(
        f"{RESOURCE}/resourceslices",
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": f"tmpl-{tag}"},
            "spec": {
                "driver": driver,
                "nodeName": rig.node_name,
                "pool": {"name": rig.node_name, "generation": 1, "resourceSliceCount": 1},
                "devices": [{"name": "d0"}],
            },
        },
    )
    created.post(
        f"{RESOURCE}/namespaces/{NS}/resourceclaimtemplates",
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaimTemplate",
            "metadata": {"name": f"tmpl-{tag}"},
            "spec": {
                "spec": {
                    "devices": {
                        "requests": [{"name": "r", "exactly": {"deviceClassName": f"tmpl-{tag}"}}]
                    }
                }
            },
        },
    )
    pod = created.post(
        f"/api/v1/namespaces/{NS}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"tmpl-{tag}"},
            "spec": {
                "resourceClaims": [{"name": "c", "resourceClaimTemplateName": f"tmpl-{tag}"}],
                "containers": [
                    {
                        "name": "c",
                        "image": rig.busybox_image,
                        "resources": {"claims": [{"name": "c"}]},
                    }
                ],
            },
        },
    )
    pod_path = f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}"

    def generated_claim() -> str | None:
        statuses = kube.get(pod_path).json().get("status", {}).get("resourceClaimStatuses", [])
        names = [s.get("resourceClaimName") for s in statuses if s["name"] == "c"]
        return names[0] if names else None

    claim_name = wait_for("claim generated from template", generated_claim, timeout=60)
    created.paths.append(f"{RESOURCE}/namespaces/{NS}/resourceclaims/{claim_name}")
    assert (
        wait_for("pod bound", lambda: kube.get(pod_path).json()["spec"].get("nodeName"), 60)
        == rig.node_name
    )
    claim = kube.get(f"{RESOURCE}/namespaces/{NS}/resourceclaims/{claim_name}").json()
    owner = claim["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("Pod", pod["metadata"]["uid"])
    assert claim["status"]["allocation"]["devices"]["results"][0]["device"] == "d0"
