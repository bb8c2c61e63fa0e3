"""The synthetic 512-CPU hybrid node of ``just bench-sched-scale``: dracpu's sysfs reader and slice
model turn it into the slices the bench publishes (the timing itself is the bench's, not a test)."""

from __future__ import annotations

from collections import Counter

import pytest

from dracpu.core.names import DRIVER_NAME
from dracpu.core.slices import DeviceMode
from dracpu.core.topology import CoreType, Topology
from tests.support.synthetic_node import device_attributes, node_slice_specs, synthetic_topology


@pytest.fixture(scope="module")
def topology() -> Topology:
    return synthetic_topology()


def test_machine_is_two_sockets_four_numa_nodes_of_p_and_e_cores(topology: Topology) -> None:
    assert topology.num_cpus == 512
    assert sorted(topology.sockets) == [0, 1]
    assert sorted(topology.numas) == [0, 1, 2, 3]
    per_numa = Counter((i.numa, i.core_type) for i in topology.cpus.values())
    for numa in range(4):
        assert per_numa[(numa, CoreType.PERFORMANCE)] == 96
        assert per_numa[(numa, CoreType.EFFICIENCY)] == 32
    widths = Counter(
        (topology.cpus[cpus.first()].core_type, len(cpus)) for cpus in topology.cores.values()
    )
    assert widths == {(CoreType.PERFORMANCE, 2): 192, (CoreType.EFFICIENCY, 1): 128}


def test_individual_mode_is_four_full_slices_with_a_core_type_per_cpu(topology: Topology) -> None:
    specs = node_slice_specs(topology, "node-a", DeviceMode.INDIVIDUAL)
    assert [len(s["devices"]) for s in specs] == [128, 128, 128, 128]
    assert {(s["nodeName"], s["driver"]) for s in specs} == {("node-a", DRIVER_NAME)}
    assert {(s["pool"]["name"], s["pool"]["resourceSliceCount"]) for s in specs} == {("node-a", 4)}
    attrs = device_attributes(specs)
    assert sorted(attrs) == [f"cpudev{i:03d}" for i in range(512)]
    kinds = Counter(
        (a[f"{DRIVER_NAME}/numaNodeID"], a[f"{DRIVER_NAME}/coreType"]) for a in attrs.values()
    )
    assert kinds == {
        **{(n, "p-core"): 96 for n in range(4)},
        **{(n, "e-core"): 32 for n in range(4)},
    }
    # Each device's attributes are those of the CPU it stands for.
    for a in attrs.values():
        info = topology.cpus[a[f"{DRIVER_NAME}/cpuID"]]
        assert (info.numa, info.socket, str(info.core_type)) == (
            a[f"{DRIVER_NAME}/numaNodeID"],
            a[f"{DRIVER_NAME}/socketID"],
            a[f"{DRIVER_NAME}/coreType"],
        )


def test_grouped_mode_is_one_slice_with_one_device_per_numa_node(topology: Topology) -> None:
    specs = node_slice_specs(topology, "node-b", DeviceMode.GROUPED)
    assert len(specs) == 1
    devices = specs[0]["devices"]
    assert [d["name"] for d in devices] == [f"cpudevnuma{i:03d}" for i in range(4)]
    assert all(d["allowMultipleAllocations"] for d in devices)
    assert [d["capacity"][f"{DRIVER_NAME}/cpu"]["value"] for d in devices] == ["128"] * 4
    attrs = device_attributes(specs)
    assert [attrs[d["name"]][f"{DRIVER_NAME}/socketID"] for d in devices] == [0, 0, 1, 1]
    # Grouped devices carry no per-core attributes: a claim cannot pick P-cores there.
    assert not any(f"{DRIVER_NAME}/coreType" in a for a in attrs.values())
