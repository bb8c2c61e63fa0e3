"""The synthetic 512-CPU hybrid node of the scheduling-scale bench, and the slices dracpu would
publish for it.

The machine: 2 sockets x 2 NUMA nodes, each node with 48 SMT-2 P-cores (96 CPUs) and 32
single-threaded E-cores: 512 CPUs, 384 of them ``p-core``, 128 ``e-core``. It goes through the
same path as a real node: a sysfs tree is written (``tests.support.sysfs_tree``), read back by
:func:`dracpu.sysfs.read_topology`, and turned into ResourceSlice specs by
:func:`dracpu.core.slices.build_slice_specs`, so the slices are exactly what the daemon would
publish on such a machine, in either device mode.
"""

from __future__ import annotations

from typing import Any

from dracpu.core.slices import DeviceMode, SliceOptions, build_slice_specs
from dracpu.core.topology import Topology
from dracpu.sysfs import read_topology
from tests.support.sysfs_tree import SysfsSpec, scratch_dir, write_tree

__all__ = ["SYNTHETIC_512_HYBRID", "device_attributes", "node_slice_specs", "synthetic_topology"]

SYNTHETIC_512_HYBRID = SysfsSpec(
    sockets=2,
    numa_per_socket=2,
    cores_per_numa=80,
    threads=2,
    hybrid=32,
    l3_per="numa",
)
"""2 sockets x 2 NUMA x (48 SMT-2 P-cores + 32 E-cores) = 512 CPUs."""


def synthetic_topology(spec: SysfsSpec = SYNTHETIC_512_HYBRID) -> Topology:
    """The machine as dracpu's sysfs reader sees it (the tree lives on tmpfs while read)."""
    with scratch_dir() as tmp:
        return read_topology(write_tree(tmp, spec))


def node_slice_specs(topology: Topology, node: str, mode: DeviceMode) -> list[dict[str, Any]]:
    """The ResourceSlice specs dracpu publishes for ``node`` with this topology in ``mode``
    (grouped: by NUMA node, upstream's default)."""
    return build_slice_specs(topology, SliceOptions(node_name=node, mode=mode))


def device_attributes(specs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Device name → its attributes as plain values (``{"dra.cpu/coreType": "p-core", …}``)."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        for device in spec["devices"]:
            out[device["name"]] = {
                name: next(iter(value.values()))
                for name, value in device.get("attributes", {}).items()
            }
    return out
