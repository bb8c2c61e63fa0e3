"""Describe a node's CPUs as ResourceSlices, exactly as upstream ``dra.cpu`` names them.

Two device modes, matching kubernetes-sigs/dra-driver-cpu so existing claims keep working:

- individual: one device per non-reserved online CPU, ``cpudevNNN`` by position, the SMT
  siblings of a core consecutive (cores ordered by their lowest CPU);
- grouped: one consumable-capacity device per NUMA node (``cpudevnumaNNN``), socket
  (``cpudevsocketNNN``) or the whole machine (``cpudevmachine``), capacity ``dra.cpu/cpu``.

The output is JSON-ready dicts in the resource.k8s.io/v1 wire format. Device names depend only
on the topology and the reserved set, so they are the same after a restart.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dracpu.core.cpuset import CpuSet
from dracpu.core.names import DRIVER_NAME, qualified
from dracpu.core.topology import Topology
from dracpu.errors import InvalidValueError

CPU_CAPACITY = qualified("cpu")

MAX_DEVICES_PER_SLICE = 128
MAX_DEVICES_PER_SLICE_ADVANCED = 64
"""Limit when any device uses list-type attributes (or taints / consumesCounters)."""
MAX_ATTRIBUTES_AND_CAPACITIES = 32

STANDARD_NUMA = "resource.kubernetes.io/numaNode"
STANDARD_PCIE_ROOT = "resource.kubernetes.io/pcieRoot"

Json = dict[str, Any]


class DeviceMode(enum.StrEnum):
    """How CPUs map to devices."""

    INDIVIDUAL = "individual"
    GROUPED = "grouped"


class GroupBy(enum.StrEnum):
    """The domain one grouped device stands for."""

    NUMANODE = "numanode"
    SOCKET = "socket"
    MACHINE = "machine"


@dataclass(frozen=True, slots=True)
class SliceOptions:
    """What to publish for one node; the defaults are upstream's (grouped, by NUMA node)."""

    node_name: str
    reserved: CpuSet = CpuSet()  # noqa: RUF009 (immutable value)
    mode: DeviceMode = DeviceMode.GROUPED
    group_by: GroupBy = GroupBy.NUMANODE
    expose_pcie_roots: bool = False
    node_allocatable_mapping: bool = False
    """KEP-5517 (upstream's ``publishNodeAllocatableResourceMapping``): each device says how
    its allocation maps onto the node's ``cpu`` allocatable, so the scheduler does not count a
    claimed CPU twice. Needs the ``DRANodeAllocatableResources`` gate (1.37: alpha)."""
    hidden: CpuSet = CpuSet()  # noqa: RUF009 (immutable value)
    """CPUs held by claims that the published devices do not stand for (a claim prepared before
    a switch of device mode or grouping). The scheduler cannot see them as taken, so individual
    devices of these CPUs are left out and grouped devices offer that much less capacity; device
    names stay as they are. Empty in the steady state."""


def node_allocatable(mode: DeviceMode) -> Json:
    """A device's ``nodeAllocatableResources`` (resource.k8s.io/v1 in 1.37), as upstream maps it.

    Grouped devices count what the claim consumed of ``dra.cpu/cpu``; individual devices count
    one CPU per allocated device.
    """
    if mode is DeviceMode.GROUPED:
        mapping: Json = {"capacityKey": CPU_CAPACITY, "capacityMultiplier": "1"}
    else:
        mapping = {"deviceMultiplier": "1"}
    return {"cpu": {"mapping": mapping}}


@dataclass(frozen=True, slots=True)
class CpuDevice:
    """One published device and the CPUs it stands for."""

    name: str
    cpus: CpuSet


def cpu_devices(topology: Topology, options: SliceOptions) -> list[CpuDevice]:
    """The devices of the node in publishing order; prepare uses this to map names to CPUs."""
    allocatable = topology.online - options.reserved
    if options.mode is DeviceMode.INDIVIDUAL:
        groups = sorted(
            (core & allocatable for core in topology.cores.values() if core & allocatable),
            key=CpuSet.first,
        )
        cpus = [cpu for group in groups for cpu in group]
        return [CpuDevice(f"cpudev{i:03d}", CpuSet.of([cpu])) for i, cpu in enumerate(cpus)]
    if options.group_by is GroupBy.MACHINE:
        return [CpuDevice("cpudevmachine", allocatable)] if allocatable else []
    if options.group_by is GroupBy.SOCKET:
        domains, prefix = topology.sockets, "cpudevsocket"
    else:
        domains, prefix = topology.numas, "cpudevnuma"
    return [
        CpuDevice(f"{prefix}{domain_id:03d}", cpus & allocatable)
        for domain_id, cpus in sorted(domains.items())
        if cpus & allocatable
    ]


def build_devices(topology: Topology, options: SliceOptions) -> list[Json]:
    """The ``spec.devices`` entries of every slice of the node, in order."""
    devices = cpu_devices(topology, options)
    hidden = options.hidden
    if options.mode is DeviceMode.INDIVIDUAL:
        built = [_individual(topology, d, options) for d in devices if not d.cpus <= hidden]
    else:
        built = [
            _grouped(topology, d, options, offered=len(d.cpus - hidden))
            for d in devices
            if not d.cpus <= hidden
        ]
    if options.node_allocatable_mapping:
        for device in built:
            device["nodeAllocatableResources"] = node_allocatable(options.mode)
    for device in built:
        n = len(device.get("attributes", {})) + len(device.get("capacity", {}))
        if n > MAX_ATTRIBUTES_AND_CAPACITIES:
            raise InvalidValueError(
                f"device {device['name']} has {n} attributes and capacities "
                f"(limit {MAX_ATTRIBUTES_AND_CAPACITIES})",
                value=n,
                origin="slice model",
            )
    return built


def build_slice_specs(topology: Topology, options: SliceOptions, generation: int = 1) -> list[Json]:
    """ResourceSlice ``spec`` dicts for the node's pool, chunked to the per-slice device limit."""
    devices = build_devices(topology, options)
    limit = max_devices_per_slice(devices)
    chunks = [devices[i : i + limit] for i in range(0, len(devices), limit)] or [[]]
    return [
        {
            "driver": DRIVER_NAME,
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


def max_devices_per_slice(devices: Sequence[Mapping[str, Any]]) -> int:
    """128, or 64 when any device uses list-type attributes, taints or consumesCounters."""
    for device in devices:
        if device.get("taints") or device.get("consumesCounters"):
            return MAX_DEVICES_PER_SLICE_ADVANCED
        for value in device.get("attributes", {}).values():
            if any(k in value for k in ("ints", "bools", "strings", "versions")):
                return MAX_DEVICES_PER_SLICE_ADVANCED
    return MAX_DEVICES_PER_SLICE


def _int(value: int) -> Json:
    return {"int": value}


def _numa_attributes(numa: int) -> Json:
    return {
        STANDARD_NUMA: _int(numa),
        qualified("numaNodeID"): _int(numa),
        "dra.net/numaNode": _int(numa),
    }


def _pcie_roots(topology: Topology, cpus: CpuSet) -> list[str]:
    return [root for root, local in topology.pcie_roots.items() if not local.isdisjoint(cpus)]


def _prototype_attributes(topology: Topology, cpus: CpuSet) -> Json:
    """The attributes of the nri-plugins ``native.cpu`` prototype that upstream lacks, for the
    CPUs of one device, each only when every CPU agrees: ``localMemory`` (the nearest NUMA node
    with memory, which differs from the CPU's own node on memory-less nodes), ``baseFreq`` and
    ``maxFreq`` (kHz, from cpufreq)."""
    infos = [topology.cpus[c] for c in cpus]
    values = {
        "localMemory": {topology.local_memory_of(i.numa) for i in infos},
        "baseFreq": {i.base_freq_khz for i in infos},
        "maxFreq": {i.max_freq_khz for i in infos},
    }
    attributes: Json = {}
    for name, found in values.items():
        if len(found) == 1 and (value := found.pop()) is not None:
            attributes[qualified(name)] = _int(value)
    return attributes


def _individual(topology: Topology, device: CpuDevice, options: SliceOptions) -> Json:
    cpu = device.cpus.first()
    info = topology.cpus[cpu]
    attributes: Json = {
        **_numa_attributes(info.numa),
        qualified("socketID"): _int(info.socket),
        qualified("smtEnabled"): {"bool": topology.smt_enabled},
        qualified("coreType"): {"string": str(info.core_type)},
        qualified("coreID"): _int(topology.machine_core_id(cpu)),
        qualified("cpuID"): _int(cpu),
        qualified("dieID"): _int(info.die),
        qualified("isolated"): {"bool": cpu in topology.isolated},
        **_prototype_attributes(topology, device.cpus),
    }
    if info.l3 is not None:
        attributes[qualified("cacheL3ID")] = _int(info.l3)
    if info.l2 is not None:
        attributes[qualified("cacheL2ID")] = _int(info.l2)
    if info.cluster is not None:
        attributes[qualified("clusterID")] = _int(info.cluster)
    if options.expose_pcie_roots and (roots := _pcie_roots(topology, device.cpus)):
        attributes[STANDARD_PCIE_ROOT] = {"strings": roots}
    return {"name": device.name, "attributes": dict(sorted(attributes.items()))}


def _grouped(topology: Topology, device: CpuDevice, options: SliceOptions, *, offered: int) -> Json:
    attributes: Json = {
        qualified("smtEnabled"): {"bool": topology.smt_enabled},
        qualified("numCPUs"): _int(len(device.cpus)),
        **_prototype_attributes(topology, device.cpus),
    }
    sockets = {topology.cpus[c].socket for c in device.cpus}
    numas = {topology.cpus[c].numa for c in device.cpus}
    if options.group_by is not GroupBy.MACHINE and len(sockets) == 1:
        attributes[qualified("socketID")] = _int(sockets.pop())
    if options.group_by is GroupBy.NUMANODE and len(numas) == 1:
        attributes.update(_numa_attributes(numas.pop()))
    if options.expose_pcie_roots and (roots := _pcie_roots(topology, device.cpus)):
        attributes[STANDARD_PCIE_ROOT] = {"strings": roots}
    return {
        "name": device.name,
        "attributes": dict(sorted(attributes.items())),
        "capacity": {CPU_CAPACITY: {"value": str(offered)}},
        "allowMultipleAllocations": True,
    }
