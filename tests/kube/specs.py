"""Desired ResourceSlice specs built by hand for the kube tests (independent of the core model)."""

from __future__ import annotations

from typing import Any

from dracpu import DRIVER_NAME


def device(cpu: int, *, consumable: bool = False, numa: int = 0) -> dict[str, Any]:
    dev: dict[str, Any] = {
        "name": f"cpudev{cpu:03d}",
        "attributes": {
            "dra.cpu/numaNodeID": {"int": numa},
            "dra.cpu/coreID": {"int": cpu // 2},
            "dra.cpu/socketID": {"int": 0},
        },
        "capacity": {"dra.cpu/cpu": {"value": "1"}},
    }
    if consumable:
        dev["allowMultipleAllocations"] = True
    return dev


def make_specs(
    node: str, *, slices: int = 8, per_slice: int = 128, consumable: bool = False, numa: int = 0
) -> list[dict[str, Any]]:
    """``slices`` specs of ``per_slice`` devices each, pool = node, generation 0."""
    specs = []
    for s in range(slices):
        specs.append(
            {
                "driver": DRIVER_NAME,
                "nodeName": node,
                "pool": {"name": node, "generation": 0, "resourceSliceCount": slices},
                "devices": [
                    device(s * per_slice + i, consumable=consumable, numa=numa)
                    for i in range(per_slice)
                ],
            }
        )
    return specs
