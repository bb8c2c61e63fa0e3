"""Describe a node's memory and hugepages as ``dra.memory`` ResourceSlices.

Compatible with upstream dra-driver-memory, so its claims and DeviceClasses work unchanged:

- one device per NUMA node per resource (memory, hugepages of each size) that has something
  to offer, with one consumable capacity ``size`` (bytes) and ``allowMultipleAllocations``;
- a request policy: default 1 MiB of memory or one hugepage, valid range from one page to the
  whole device in steps of one page;
- attributes ``resource.kubernetes.io/{numaNode,pageSize,hugeTLB}`` and, for constraints
  across drivers, ``dra.cpu/numaNodeID`` and ``dra.net/numaNode``;
- one slice per resource (chunked at 128 devices) in one pool named after the node.

Unlike upstream, device names come from the topology alone (``memory-numa000``,
``hugepages-2mi-numa001``), so they are the same after every restart; upstream appends a
random suffix on each start, which orphans allocations across restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dracpu.core.memory import DRIVER, MemoryResource, MemoryTopology
from dracpu.core.quantity import format_bytes
from dracpu.core.slices import MAX_DEVICES_PER_SLICE, STANDARD_NUMA

__all__ = [
    "DEVICE_CLASS_API_VERSION",
    "PAGE_SIZE_ATTRIBUTE",
    "HUGETLB_ATTRIBUTE",
    "SIZE_CAPACITY",
    "MemoryDevice",
    "MemorySliceOptions",
    "build_memory_devices",
    "build_memory_slice_specs",
    "device_classes",
    "memory_devices",
]

SIZE_CAPACITY = "size"
PAGE_SIZE_ATTRIBUTE = "resource.kubernetes.io/pageSize"
HUGETLB_ATTRIBUTE = "resource.kubernetes.io/hugeTLB"
DEVICE_CLASS_API_VERSION = "resource.k8s.io/v1"

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class MemorySliceOptions:
    """What to publish for one node.

    ``reserved_memory`` maps a NUMA node id to the bytes of ordinary memory kept for the system
    (kubelet, daemons): they are left out of that node's ``memory`` device.
    """

    node_name: str
    reserved_memory: Mapping[int, int] | None = None


@dataclass(frozen=True, slots=True)
class MemoryDevice:
    """One published device: a resource on one NUMA node, ``capacity`` bytes."""

    name: str
    resource: MemoryResource
    numa: int
    capacity: int

    @property
    def pages(self) -> int:
        """Capacity in pages of the resource's page size."""
        return self.capacity // self.resource.page_size


def device_name(resource: MemoryResource, numa: int) -> str:
    """``memory-numa000``, ``hugepages-1gi-numa003``: from the topology only."""
    return f"{resource.device_prefix}-numa{numa:03d}"


def memory_devices(topology: MemoryTopology, options: MemorySliceOptions) -> list[MemoryDevice]:
    """The node's devices in publishing order (by resource, then NUMA node); prepare uses this
    to map device names to NUMA nodes and capacities. Empty pools publish nothing."""
    reserved = options.reserved_memory or {}
    devices: list[MemoryDevice] = []
    for resource in topology.resources:
        for node in topology.nodes:
            if resource.hugetlb:
                pool = node.pool(resource.page_size)
                size = pool.persistent_bytes if pool is not None else 0
            else:
                size = max(0, node.memory_bytes - reserved.get(node.id, 0))
            size -= size % resource.page_size
            if size > 0:
                name = device_name(resource, node.id)
                devices.append(MemoryDevice(name, resource, node.id, size))
    return devices


def build_memory_devices(topology: MemoryTopology, options: MemorySliceOptions) -> list[Json]:
    """The ``spec.devices`` entries of every slice, in order."""
    return [_device(d) for d in memory_devices(topology, options)]


def build_memory_slice_specs(
    topology: MemoryTopology, options: MemorySliceOptions, generation: int = 1
) -> list[Json]:
    """ResourceSlice ``spec`` dicts: one slice per resource, chunked at 128 devices; one empty
    slice when there is nothing to offer, so the pool still exists."""
    devices = memory_devices(topology, options)
    chunks: list[list[Json]] = []
    for resource in topology.resources:
        mine = [_device(d) for d in devices if d.resource == resource]
        chunks.extend(
            mine[i : i + MAX_DEVICES_PER_SLICE] for i in range(0, len(mine), MAX_DEVICES_PER_SLICE)
        )
    chunks = chunks or [[]]
    return [
        {
            "driver": DRIVER,
            "nodeName": options.node_name,
            "pool": {
                "name": options.node_name,
                "generation": generation,
                "resourceSliceCount": len(chunks),
            },
            "devices": chunk,
        }
        for chunk in chunks
    ]


def device_classes(topology: MemoryTopology) -> list[Json]:
    """The DeviceClass objects for the node's resources (``dra.memory``, ``dra.hugepages-2m``,
    ...), with upstream's CEL selectors, so upstream claims select the same devices."""
    return [_device_class(resource) for resource in topology.resources]


def _device_class(resource: MemoryResource) -> Json:
    expression = (
        f'device.driver == "{DRIVER}"'
        f' && device.attributes["resource.kubernetes.io"].pageSize'
        f' == "{resource.page_size_string}"'
        f' && device.attributes["resource.kubernetes.io"].hugeTLB'
        f" == {'true' if resource.hugetlb else 'false'}"
    )
    return {
        "apiVersion": DEVICE_CLASS_API_VERSION,
        "kind": "DeviceClass",
        "metadata": {"name": resource.device_class},
        "spec": {"selectors": [{"cel": {"expression": expression}}]},
    }


def _device(device: MemoryDevice) -> Json:
    resource = device.resource
    numa = {"int": device.numa}
    attributes: Json = {
        STANDARD_NUMA: numa,
        PAGE_SIZE_ATTRIBUTE: {"string": resource.page_size_string},
        HUGETLB_ATTRIBUTE: {"bool": resource.hugetlb},
        "dra.cpu/numaNodeID": numa,
        "dra.net/numaNode": numa,
    }
    return {
        "name": device.name,
        "attributes": dict(sorted(attributes.items())),
        "capacity": {SIZE_CAPACITY: _capacity(device)},
        "allowMultipleAllocations": True,
    }


def _capacity(device: MemoryDevice) -> Json:
    page = device.resource.page_size
    default = min(max(page, device.resource.minimum_request // page * page), device.capacity)
    valid_range: Json = {"min": format_bytes(page)}
    # The API wants min + step <= value: a one-page device gets no step (one valid amount).
    if device.capacity >= 2 * page:
        valid_range["step"] = format_bytes(page)
    valid_range["max"] = format_bytes(device.capacity)
    return {
        "value": format_bytes(device.capacity),
        "requestPolicy": {"default": format_bytes(default), "validRange": valid_range},
    }
