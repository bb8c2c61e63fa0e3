"""The ResourceSlice model: upstream-compatible names and attributes, limits, schema validity."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dracpu.core.cpuset import CpuSet
from dracpu.core.slice_plan import plan_slices
from dracpu.core.slices import (
    DeviceMode,
    GroupBy,
    SliceOptions,
    build_slice_specs,
    cpu_devices,
)
from dracpu.core.topology import Topology
from dracpu.sysfs import read_topology
from tests.support.captures import CAPTURE_NAMES
from tests.support.topologies import make_topology

SCHEMA_VERSIONS = ["v1.34.0", "v1.35.0", "v1.36.0"]
MODES = [
    SliceOptions("node-a", mode=DeviceMode.INDIVIDUAL),
    SliceOptions("node-a", mode=DeviceMode.INDIVIDUAL, reserved=CpuSet.parse("0-1")),
    SliceOptions("node-a", mode=DeviceMode.INDIVIDUAL, expose_pcie_roots=True),
    SliceOptions("node-a", mode=DeviceMode.GROUPED, group_by=GroupBy.NUMANODE),
    SliceOptions("node-a", mode=DeviceMode.GROUPED, group_by=GroupBy.SOCKET),
    SliceOptions("node-a", mode=DeviceMode.GROUPED, group_by=GroupBy.MACHINE),
]
MODE_IDS = ["individual", "reserved", "pcie", "numanode", "socket", "machine"]
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUALIFIED = re.compile(r"^([a-z0-9.-]{1,63}/)?[A-Za-z_][A-Za-z0-9_]{0,31}$")


def capture(shared_dir: Path, name: str) -> Topology:
    return read_topology(shared_dir / "fixtures" / "sysfs" / name / "sys")


def validator(shared_dir: Path, version: str) -> jsonschema.protocols.Validator:
    path = (
        shared_dir
        / "reference/kubelet-dra/openapi"
        / f"jsonschema-{version}-strict-resource.k8s.io-v1-defs.json"
    )
    defs = json.loads(path.read_text())
    schema = {
        "$schema": defs["$schema"],
        "$defs": defs["$defs"],
        "$ref": "#/$defs/io.k8s.api.resource.v1.ResourceSlice",
    }
    return jsonschema.Draft202012Validator(schema)


def check_limits(obj: dict[str, Any]) -> None:
    """The numeric limits the schema does not encode (DRA-KUBELET-AND-API.md §3.1)."""
    devices = obj["spec"]["devices"]
    has_list = any(
        any(k in v for k in ("ints", "bools", "strings", "versions"))
        for d in devices
        for v in d.get("attributes", {}).values()
    )
    assert len(devices) <= (64 if has_list else 128)
    for device in devices:
        assert NAME.match(device["name"])
        assert len(device["name"]) <= 63
        keys = [*device.get("attributes", {}), *device.get("capacity", {})]
        assert len(keys) <= 32
        for key in keys:
            assert QUALIFIED.match(key), key
        for value in device.get("attributes", {}).values():
            assert len(value) == 1
            if "string" in value:
                assert len(value["string"]) <= 64


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("options", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("machine", CAPTURE_NAMES)
def test_every_capture_and_mode_validates(
    shared_dir: Path, machine: str, options: SliceOptions, version: str
) -> None:
    topo = capture(shared_dir, machine)
    # Exactly what the publisher sends when it first publishes.
    plan = plan_slices(
        build_slice_specs(topo, options), [], driver="dra.cpu", node="node-a", owner_uid="1234"
    )
    objects = [write.body for write in plan.creates]
    check = validator(shared_dir, version)
    names: set[str] = set()
    for obj in objects:
        errors = sorted(check.iter_errors(obj), key=str)
        assert not errors, errors[0].message
        check_limits(obj)
        assert obj["spec"]["pool"] == {
            "name": "node-a",
            "generation": 1,
            "resourceSliceCount": len(objects),
        }
        for device in obj["spec"]["devices"]:
            assert device["name"] not in names
            names.add(device["name"])
    published = CpuSet()
    for device in cpu_devices(topo, options):
        published = published | device.cpus
    assert published == topo.online - options.reserved


def test_individual_devices_match_upstream_names_and_attributes(shared_dir: Path) -> None:
    # server: cpu0's sibling is cpu56 (thread_siblings_list "0,56"), NUMA node 0, socket 0.
    topo = capture(shared_dir, "server")
    spec = build_slice_specs(topo, SliceOptions("n1", mode=DeviceMode.INDIVIDUAL))[0]
    first, second = spec["devices"][0], spec["devices"][1]
    assert first["name"] == "cpudev000"
    assert first["attributes"]["dra.cpu/cpuID"] == {"int": 0}
    assert second["name"] == "cpudev001"
    assert second["attributes"]["dra.cpu/cpuID"] == {"int": 56}  # siblings consecutive
    assert first["attributes"] == {
        "dra.cpu/baseFreq": {"int": 2700000},  # cpufreq/policy0/base_frequency (kHz)
        "dra.cpu/cacheL2ID": {"int": 0},
        "dra.cpu/cacheL3ID": {"int": 0},
        "dra.cpu/coreID": {"int": 0},
        "dra.cpu/coreType": {"string": "standard"},
        "dra.cpu/cpuID": {"int": 0},
        "dra.cpu/dieID": {"int": 0},
        "dra.cpu/isolated": {"bool": False},
        "dra.cpu/localMemory": {"int": 0},
        "dra.cpu/maxFreq": {"int": 4000000},  # cpufreq/policy0/cpuinfo_max_freq (kHz)
        "dra.cpu/numaNodeID": {"int": 0},
        "dra.cpu/smtEnabled": {"bool": True},
        "dra.cpu/socketID": {"int": 0},
        "dra.net/numaNode": {"int": 0},
        "resource.kubernetes.io/numaNode": {"int": 0},
    }
    isolated = {
        d["attributes"]["dra.cpu/cpuID"]["int"]
        for d in spec["devices"]
        if d["attributes"]["dra.cpu/isolated"]["bool"]
    }
    assert isolated == {4, 5, 6, 7, 60, 61, 62, 63}
    # 112 CPUs → slices of 128 → one slice.
    assert len(build_slice_specs(topo, SliceOptions("n1", mode=DeviceMode.INDIVIDUAL))) == 1


def test_core_ids_are_machine_unique_on_two_sockets(shared_dir: Path) -> None:
    # sysfs core_id repeats on both sockets; the published coreID must not.
    topo = capture(shared_dir, "2-socket-4-node-40-core")
    devices = build_slice_specs(topo, SliceOptions("n1", mode=DeviceMode.INDIVIDUAL))[0]["devices"]
    core_ids = [d["attributes"]["dra.cpu/coreID"]["int"] for d in devices]
    assert len(set(core_ids)) == 40
    by_core: dict[int, set[int]] = {}
    for d in devices:
        by_core.setdefault(d["attributes"]["dra.cpu/coreID"]["int"], set()).add(
            d["attributes"]["dra.cpu/socketID"]["int"]
        )
    assert all(len(sockets) == 1 for sockets in by_core.values())


def test_hybrid_core_types(shared_dir: Path) -> None:
    topo = capture(shared_dir, "intel-hybrid-16cpu")
    devices = build_slice_specs(topo, SliceOptions("n1", mode=DeviceMode.INDIVIDUAL))[0]["devices"]
    types = {
        d["attributes"]["dra.cpu/cpuID"]["int"]: d["attributes"]["dra.cpu/coreType"]["string"]
        for d in devices
    }
    assert {c for c, t in types.items() if t == "p-core"} == set(range(8))
    assert {c for c, t in types.items() if t == "e-core"} == set(range(8, 16))


def test_reserved_cpus_are_excluded_and_siblings_regroup(shared_dir: Path) -> None:
    topo = capture(shared_dir, "server")
    devices = cpu_devices(
        topo, SliceOptions("n1", mode=DeviceMode.INDIVIDUAL, reserved=CpuSet.parse("0,1,57"))
    )
    cpus = [d.cpus.first() for d in devices]
    assert 0 not in cpus
    assert 1 not in cpus
    assert 57 not in cpus
    # Core groups ordered by their lowest CPU, as upstream: 2/58 first; 56 is alone (its
    # sibling 0 is reserved) and follows core 55/111.
    assert cpus[:3] == [2, 58, 3]
    assert cpus[cpus.index(55) : cpus.index(55) + 3] == [55, 111, 56]


def test_grouped_numa_devices(shared_dir: Path) -> None:
    topo = capture(shared_dir, "server")
    options = SliceOptions("n1", mode=DeviceMode.GROUPED, reserved=CpuSet.parse("0,56"))
    devices = build_slice_specs(topo, options)[0]["devices"]
    assert [d["name"] for d in devices] == [f"cpudevnuma00{i}" for i in range(4)]
    assert devices[0]["capacity"] == {"dra.cpu/cpu": {"value": "26"}}
    assert devices[0]["allowMultipleAllocations"] is True
    assert devices[0]["attributes"]["dra.cpu/numCPUs"] == {"int": 26}
    assert devices[2]["attributes"]["dra.cpu/socketID"] == {"int": 0}
    assert devices[2]["attributes"]["resource.kubernetes.io/numaNode"] == {"int": 2}


def test_grouped_socket_and_machine_devices(shared_dir: Path) -> None:
    topo = capture(shared_dir, "2-socket-4-node-40-core")
    socket = SliceOptions("n1", mode=DeviceMode.GROUPED, group_by=GroupBy.SOCKET)
    names = [d["name"] for d in build_slice_specs(topo, socket)[0]["devices"]]
    assert names == ["cpudevsocket000", "cpudevsocket001"]
    machine = SliceOptions("n1", mode=DeviceMode.GROUPED, group_by=GroupBy.MACHINE)
    (device,) = build_slice_specs(topo, machine)[0]["devices"]
    assert device["name"] == "cpudevmachine"
    assert device["capacity"] == {"dra.cpu/cpu": {"value": "80"}}
    assert "dra.cpu/socketID" not in device["attributes"]


def test_large_machine_is_chunked_and_names_are_stable() -> None:
    topo = make_topology(2, 4, 32, 2)  # 512 CPUs
    specs = build_slice_specs(topo, SliceOptions("big", mode=DeviceMode.INDIVIDUAL))
    assert [len(s["devices"]) for s in specs] == [128, 128, 128, 128]
    assert all(s["pool"]["resourceSliceCount"] == 4 for s in specs)
    assert specs == build_slice_specs(
        make_topology(2, 4, 32, 2), SliceOptions("big", mode=DeviceMode.INDIVIDUAL)
    )
    with_lists = build_slice_specs(
        topo, SliceOptions("big", mode=DeviceMode.INDIVIDUAL, expose_pcie_roots=True)
    )
    # make_topology without PCIe roots publishes no list attribute: still 128 per slice.
    assert len(with_lists) == 4
    pcie = make_topology(2, 4, 32, 2, pcie_roots_per_socket=1)
    specs = build_slice_specs(
        pcie, SliceOptions("big", mode=DeviceMode.INDIVIDUAL, expose_pcie_roots=True)
    )
    assert [len(s["devices"]) for s in specs] == [64] * 8
    first = specs[0]["devices"][0]["attributes"]["resource.kubernetes.io/pcieRoot"]
    assert first == {"strings": ["pci0000:00"]}


def _capture_frequencies(sysfs: Path, cpu: int) -> tuple[int | None, int | None]:
    """(base, max) kHz straight from a capture's files: ``cpuN/cpufreq`` holds the link
    target (``../cpufreq/policyN``) as text."""
    link = sysfs / "devices" / "system" / "cpu" / f"cpu{cpu}" / "cpufreq"
    if not link.is_file():
        return None, None
    policy = link.parent / link.read_text().strip()
    values = []
    for name in ("base_frequency", "cpuinfo_max_freq"):
        path = policy / name
        values.append(int(path.read_text()) if path.is_file() else None)
    return values[0], values[1]


@pytest.mark.parametrize("machine", CAPTURE_NAMES)
def test_prototype_attributes_on_every_capture(shared_dir: Path, machine: str) -> None:
    sysfs = shared_dir / "fixtures" / "sysfs" / machine / "sys"
    topo = read_topology(sysfs)
    has_memory = sysfs / "devices" / "system" / "node" / "has_memory"
    with_memory = CpuSet.parse(has_memory.read_text()) if has_memory.is_file() else CpuSet()
    individual = build_slice_specs(topo, SliceOptions("n", mode=DeviceMode.INDIVIDUAL))
    frequencies = {}
    for device in (d for spec in individual for d in spec["devices"]):
        attributes = device["attributes"]
        cpu = attributes["dra.cpu/cpuID"]["int"]
        numa = attributes["dra.cpu/numaNodeID"]["int"]
        # Every capture's CPU nodes have memory: each CPU's memory is its own node.
        assert numa in with_memory or not has_memory.is_file()
        assert attributes["dra.cpu/localMemory"] == {"int": numa}
        base, top = frequencies[cpu] = _capture_frequencies(sysfs, cpu)
        assert attributes.get("dra.cpu/baseFreq") == (None if base is None else {"int": base})
        assert attributes.get("dra.cpu/maxFreq") == (None if top is None else {"int": top})
    # Which captures have cpufreq, from their files: these four, not the ghw ones.
    with_cpufreq = {"2-socket-4-node-40-core", "desktop", "intel-hybrid-16cpu", "server"}
    assert any(f != (None, None) for f in frequencies.values()) == (machine in with_cpufreq)
    # Grouped devices carry a frequency only when all their CPUs share it.
    grouped = build_slice_specs(topo, SliceOptions("n"))
    for device, cpus in zip(
        (d for spec in grouped for d in spec["devices"]),
        cpu_devices(topo, SliceOptions("n")),
        strict=True,
    ):
        tops = {frequencies[c][1] for c in cpus.cpus}
        expected = {"int": tops.pop()} if len(tops) == 1 and None not in tops else None
        assert device["attributes"].get("dra.cpu/maxFreq") == expected
        if machine in ("desktop", "intel-hybrid-16cpu"):  # CPUs of 2 maximum frequencies
            assert expected is None


def test_local_memory_of_memoryless_nodes_is_the_nearest_memory_node() -> None:
    # 2 sockets x 2 NUMA nodes; distances 10 local, 12 same socket, 21 other socket.
    # Node 1 (socket 0) has no memory: node 0 (12) beats nodes 2 and 3 (21).
    # Node 2 and 3 (socket 1) have none: both fall back to node 0 or 1 at 21, the lower id wins.
    topo = make_topology(2, 2, 2, 2, memoryless_nodes=[1, 2, 3])
    assert [topo.local_memory_of(n) for n in range(4)] == [0, 0, 0, 0]
    topo = make_topology(2, 2, 2, 2, memoryless_nodes=[0, 2])
    assert [topo.local_memory_of(n) for n in range(4)] == [1, 1, 3, 3]
    devices = build_slice_specs(topo, SliceOptions("n"))[0]["devices"]
    assert [d["attributes"]["dra.cpu/localMemory"]["int"] for d in devices] == [1, 1, 3, 3]
    assert [d["attributes"]["dra.cpu/numaNodeID"]["int"] for d in devices] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("mode", "mapping"),
    [
        (DeviceMode.GROUPED, {"capacityKey": "dra.cpu/cpu", "capacityMultiplier": "1"}),
        (DeviceMode.INDIVIDUAL, {"deviceMultiplier": "1"}),
    ],
    ids=["grouped", "individual"],
)
def test_node_allocatable_mapping_when_enabled(
    shared_dir: Path, mode: DeviceMode, mapping: dict[str, str]
) -> None:
    topo = capture(shared_dir, "desktop")
    on = build_slice_specs(topo, SliceOptions("n1", mode=mode, node_allocatable_mapping=True))
    off = build_slice_specs(topo, SliceOptions("n1", mode=mode))
    devices = [d for spec in on for d in spec["devices"]]
    assert devices
    assert all(d["nodeAllocatableResources"] == {"cpu": {"mapping": mapping}} for d in devices)
    assert not any("nodeAllocatableResources" in d for spec in off for d in spec["devices"])
