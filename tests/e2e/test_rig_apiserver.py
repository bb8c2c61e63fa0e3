"""The rig's kube-apiserver serves resource.k8s.io/v1 with consumable capacity enabled."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.rig import Rig

pytestmark = pytest.mark.e2e

SLICES = "/apis/resource.k8s.io/v1/resourceslices"


def _slice(rig: Rig, driver: str, capacity: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"generateName": "rig-smoke-"},
        "spec": {
            "driver": driver,
            "nodeName": rig.node_name,
            "pool": {"name": f"{driver}-pool", "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {
                    "name": "cpus0",
                    "allowMultipleAllocations": True,
                    "attributes": {"numaNode": {"int": 0}},
                    "capacity": capacity,
                }
            ],
        },
    }


def test_accepts_consumable_capacity_slice(rig: Rig, kube: httpx.Client) -> None:
    driver = f"s{uuid.uuid4().hex[:8]}.smoke.dracpu.dev"
    capacity = {
        "cpu": {"value": "4", "requestPolicy": {"default": "1", "validRange": {"min": "1"}}}
    }
    r = kube.post(SLICES, json=_slice(rig, driver, capacity))
    assert r.status_code == 201, r.text
    created = r.json()
    try:
        device = created["spec"]["devices"][0]
        # Dropped silently if DRAConsumableCapacity were off in this apiserver.
        assert device["allowMultipleAllocations"] is True
        assert device["capacity"]["cpu"]["requestPolicy"]["validRange"]["min"] == "1"
        got = kube.get(f"{SLICES}/{created['metadata']['name']}")
        assert got.status_code == 200
        assert got.json()["spec"]["driver"] == driver
    finally:
        kube.delete(f"{SLICES}/{created['metadata']['name']}")


def test_rejects_invalid_request_policy(rig: Rig, kube: httpx.Client) -> None:
    driver = f"s{uuid.uuid4().hex[:8]}.smoke.dracpu.dev"
    # The default must be one of validValues, and every valid value must fit the capacity.
    capacity = {"cpu": {"value": "2", "requestPolicy": {"default": "3", "validValues": ["1", "3"]}}}
    r = kube.post(SLICES, json=_slice(rig, driver, capacity))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["reason"] == "Invalid"
    fields = [c.get("field", "") for c in body["details"]["causes"]]
    assert any("requestPolicy" in f for f in fields), fields
