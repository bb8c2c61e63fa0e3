"""The memory reader on synthetic sysfs trees: pools, surplus, memory-less nodes, fallbacks,
bad values. Numbers are written out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from dracpu.core.memory import GIB, MIB
from dracpu.core.memory_slices import MemorySliceOptions, memory_devices
from dracpu.errors import TopologyError
from dracpu.sysfs_memory import MemoryReader, read_memory
from tests.support.sysfs_tree import SysfsSpec, write_file, write_tree

NODE = "devices/system/node"


def pool_files(node: int, kb: int, nr: int, free: int = 0, surplus: int = 0) -> dict[str, str]:
    d = f"{NODE}/node{node}/hugepages/hugepages-{kb}kB"
    return {
        f"{d}/nr_hugepages": str(nr),
        f"{d}/free_hugepages": str(free),
        f"{d}/surplus_hugepages": str(surplus),
    }


def test_pools_are_subtracted_and_surplus_stays_memory(sysfs_tmp: Path) -> None:
    spec = SysfsSpec(
        sockets=2,
        cores_per_numa=2,
        memory_kib_per_node=8 * 1024 * 1024,  # 8 GiB per node
        extra_files={
            **pool_files(0, 2048, nr=512, free=500),
            **pool_files(0, 1048576, nr=2, free=2),
            **pool_files(1, 2048, nr=10, surplus=4),  # 6 persistent, 4 overcommitted
            **pool_files(1, 1048576, nr=0),
            "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages": "522",
            "kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages": "2",
        },
    )
    topo = read_memory(write_tree(sysfs_tmp, spec), page_size=4096)
    assert topo.hugepage_sizes == (2 * MIB, GIB)
    n0, n1 = topo.nodes
    assert n0.total_bytes == 8 * GIB
    assert n0.free_bytes == 4 * GIB  # the writer's MemFree is half
    assert n0.pool(2 * MIB) is not None
    assert n0.memory_bytes == 8 * GIB - 512 * 2 * MIB - 2 * GIB
    assert n1.memory_bytes == 8 * GIB - 6 * 2 * MIB
    devices = {d.name: d for d in memory_devices(topo, MemorySliceOptions("n"))}
    assert sorted(devices) == [
        "hugepages-1gi-numa000",
        "hugepages-2mi-numa000",
        "hugepages-2mi-numa001",
        "memory-numa000",
        "memory-numa001",
    ]
    assert devices["hugepages-2mi-numa001"].pages == 6
    assert devices["hugepages-1gi-numa000"].capacity == 2 * GIB
    assert devices["memory-numa001"].capacity == 8 * GIB - 12 * MIB


def test_memoryless_and_cpuless_nodes(sysfs_tmp: Path) -> None:
    # Nodes 0-1 with CPUs; node 1 has no memory; node 2 is memory-only (CXL-like).
    spec = SysfsSpec(sockets=2, cores_per_numa=2, memoryless_nodes=(1,), cpuless_nodes=1)
    topo = read_memory(write_tree(sysfs_tmp, spec), page_size=4096)
    assert [(n.id, n.memory_only) for n in topo.nodes] == [(0, False), (2, True)]


def test_no_node_directory_falls_back_to_proc(sysfs_tmp: Path) -> None:
    root = write_tree(sysfs_tmp, SysfsSpec(node_dir=False))
    write_file(sysfs_tmp / "proc" / "meminfo", "MemTotal:  1048576 kB\nMemFree:  1024 kB")
    write_file(root / "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "8")
    (node,) = read_memory(root, page_size=4096).nodes
    assert node.id == 0
    assert node.total_bytes == GIB
    assert node.free_bytes == MIB
    assert node.memory_bytes == GIB - 16 * MIB


def test_no_memory_information_publishes_nothing(sysfs_tmp: Path) -> None:
    root = write_tree(sysfs_tmp, SysfsSpec(node_dir=False))
    topo = MemoryReader(root, proc_root=sysfs_tmp / "absent", page_size=4096).read_memory()
    assert topo.nodes == ()
    assert memory_devices(topo, MemorySliceOptions("n")) == []


@pytest.mark.parametrize(
    ("rel", "text", "problem"),
    [
        (f"{NODE}/node0/hugepages/hugepages-2048kB/nr_hugepages", "lots", "not an integer"),
        (f"{NODE}/node0/hugepages/hugepages-2048kB/nr_hugepages", "-1", "negative count"),
        (f"{NODE}/node0/meminfo", "Node 0 MemTotal: 12x kB", "not an integer"),
        (f"{NODE}/has_memory", "0-", "has_memory"),
    ],
    ids=["word", "negative", "meminfo", "has-memory"],
)
def test_bad_values_name_the_file(sysfs_tmp: Path, rel: str, text: str, problem: str) -> None:
    root = write_tree(sysfs_tmp, SysfsSpec(extra_files={rel: text}))
    with pytest.raises(TopologyError) as info:
        read_memory(root)
    assert problem in str(info.value)
    assert info.value.path == str(root / rel)
