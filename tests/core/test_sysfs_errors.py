"""The sysfs reader's failure modes: missing or malformed REQUIRED files raise one-line
``TopologyError``s naming the path; missing OPTIONAL files degrade to documented defaults."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dracpu.core.cpuset import CpuSet
from dracpu.errors import DracpuError, TopologyError
from dracpu.sysfs import read_topology
from tests.support.sysfs_tree import SysfsSpec, write_file, write_tree

CPU = Path("devices/system/cpu")
NODE = Path("devices/system/node")

# 1 socket x 2 NUMA nodes x 2 cores x SMT-2: CPUs 0-7, cores {0,4} {1,5} {2,6} {3,7}.
SPEC = SysfsSpec(numa_per_socket=2, cores_per_numa=2, threads=2, pcie_roots_per_socket=1)


@pytest.fixture
def root(sysfs_tmp: Path) -> Path:
    return write_tree(sysfs_tmp, SPEC)


def topology_error(root: Path) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        read_topology(root)
    err = info.value
    assert isinstance(err, DracpuError)
    assert "\n" not in str(err), "errors are one line"
    return err


# Not a sysfs tree.


def test_missing_root(sysfs_tmp: Path) -> None:
    missing = sysfs_tmp / "no-such-sys"
    err = topology_error(missing)
    assert str(missing / CPU) in str(err)
    assert err.path == str(missing / CPU)


def test_not_a_sysfs_tree(sysfs_tmp: Path) -> None:
    write_file(sysfs_tmp / "etc" / "hostname", "node-1")
    err = topology_error(sysfs_tmp)
    assert "not a sysfs tree" in str(err)
    assert str(sysfs_tmp / CPU) in str(err)


def test_cpu_path_is_a_file(sysfs_tmp: Path) -> None:
    write_file(sysfs_tmp / CPU, "not a directory")
    assert str(sysfs_tmp / CPU) in str(topology_error(sysfs_tmp))


def test_no_cpu_directories(sysfs_tmp: Path) -> None:
    write_file(sysfs_tmp / CPU / "online", "0-3")
    err = topology_error(sysfs_tmp)
    assert "no cpuN directories" in str(err)
    assert str(sysfs_tmp / CPU) in str(err)


def test_online_cpu_without_directory(root: Path) -> None:
    write_file(root / CPU / "online", "0-8")
    err = topology_error(root)
    assert str(root / CPU / "cpu8") in str(err)


# Required per-CPU files.


@pytest.mark.parametrize(
    "name", ["core_id", "physical_package_id"], ids=["core_id", "physical_package_id"]
)
def test_missing_required_topology_file(root: Path, name: str) -> None:
    path = root / CPU / "cpu2" / "topology" / name
    path.unlink()
    err = topology_error(root)
    assert str(path) in str(err)
    assert "missing" in str(err)


def test_empty_required_file(root: Path) -> None:
    path = root / CPU / "cpu2" / "topology" / "core_id"
    write_file(path, "")
    err = topology_error(root)
    assert str(path) in str(err)
    assert "empty" in str(err)


def test_online_cpu_without_topology_directory(root: Path) -> None:
    shutil.rmtree(root / CPU / "cpu3" / "topology")
    assert str(root / CPU / "cpu3" / "topology") in str(topology_error(root))


@pytest.mark.parametrize(
    ("rel", "text"),
    [
        pytest.param("cpu1/topology/core_id", "abc", id="core_id-letters"),
        pytest.param("cpu1/topology/core_id", "1.5", id="core_id-decimal"),
        pytest.param("cpu1/topology/physical_package_id", "zero", id="package-word"),
        pytest.param("cpu1/topology/die_id", "d0", id="die_id"),
        pytest.param("cpu1/topology/cluster_id", "0x1", id="cluster_id-hex"),
        pytest.param("cpu1/cache/index3/level", "L3", id="cache-level"),
        pytest.param("cpu1/cache/index2/id", "two", id="cache-id"),
    ],
)
def test_garbage_integer(root: Path, rel: str, text: str) -> None:
    path = root / CPU / rel
    write_file(path, text)
    err = topology_error(root)
    assert str(path) in str(err)
    assert repr(text) in str(err)


def test_required_file_unreadable(root: Path) -> None:
    # A directory where a file should be makes open() fail even for root.
    path = root / CPU / "cpu1" / "topology" / "core_id"
    path.unlink()
    path.mkdir()
    err = topology_error(root)
    assert str(path) in str(err)
    assert "cannot read" in str(err)


# Malformed cpu lists: the message names the path and the bad token.


@pytest.mark.parametrize(
    ("rel", "text", "token"),
    [
        pytest.param("devices/system/cpu/online", "0-7x", "0-7x", id="online"),
        pytest.param("devices/system/cpu/present", "0-", "0-", id="present"),
        pytest.param("devices/system/cpu/isolated", "3-1", "3-1", id="isolated"),
        pytest.param("devices/system/node/node1/cpulist", "2,,3", "2,,3", id="node-cpulist"),
        pytest.param("devices/system/node/has_memory", "a", "a", id="has_memory"),
        pytest.param(
            "devices/system/cpu/cpu0/cache/index3/shared_cpu_list",
            "0-3,q",
            "q",
            id="cache-shared",
        ),
        pytest.param("devices/cpu_atom/cpus", "8-", "8-", id="hybrid-list"),
        pytest.param(
            "devices/pci0000:00/pci_bus/0000:00/cpulistaffinity", "ff", "ff", id="pcie-affinity"
        ),
    ],
)
def test_garbage_cpulist(root: Path, rel: str, text: str, token: str) -> None:
    path = root / rel
    write_file(path, text)
    err = topology_error(root)
    assert str(path) in str(err)
    assert repr(token) in str(err)
    assert str(err).count(str(path)) == 1, "the path is named once"


def test_garbage_distance(root: Path) -> None:
    path = root / NODE / "node0" / "distance"
    write_file(path, "10 x")
    err = topology_error(root)
    assert str(path) in str(err)
    assert "'10 x'" in str(err)


# Optional files degrade.


def test_no_caches(sysfs_tmp: Path) -> None:
    topo = read_topology(write_tree(sysfs_tmp, SysfsSpec(cores_per_numa=2, caches=False)))
    assert {(i.l2, i.l3) for i in topo.cpus.values()} == {(None, None)}
    assert topo.l3_groups == {}
    assert topo.l2_groups == {}
    assert topo.num_cpus == 4


def test_no_l3_cache(root: Path) -> None:
    for cpu in range(8):
        shutil.rmtree(root / CPU / f"cpu{cpu}" / "cache" / "index3")
    topo = read_topology(root)
    assert topo.l3_groups == {}
    assert {i.l3 for i in topo.cpus.values()} == {None}
    assert len(topo.l2_groups) == 4


def test_instruction_cache_is_not_an_l2(root: Path) -> None:
    # Some CPUs have a level-2 instruction cache; only Data/Unified caches count.
    for cpu in range(8):
        index = root / CPU / f"cpu{cpu}" / "cache"
        shutil.rmtree(index / "index2")
        for name, text in (("level", "2"), ("type", "Instruction"), ("id", "99")):
            write_file(index / "index2" / name, text)
            write_file(index / "index2" / "shared_cpu_list", str(cpu))
    topo = read_topology(root)
    assert topo.l2_groups == {}
    assert len(topo.l3_groups) == 1


def test_no_node_directory_means_numa_0(root: Path) -> None:
    shutil.rmtree(root / NODE)
    for cpu in range(8):
        for link in (root / CPU / f"cpu{cpu}").glob("node*"):
            link.unlink()
    topo = read_topology(root)
    assert {i.numa for i in topo.cpus.values()} == {0}
    assert topo.numas == {0: CpuSet.range(0, 7)}
    assert [n.id for n in topo.numa_nodes] == [0]


def test_optional_global_files_absent(root: Path) -> None:
    for rel in ("isolated", "smt/control", "present", "offline"):
        (root / CPU / rel).unlink()
    shutil.rmtree(root / "devices" / "pci0000:00")
    topo = read_topology(root)
    assert topo.isolated == CpuSet()
    assert topo.smt_control is None
    assert topo.present == CpuSet.range(0, 7)
    assert topo.offline == CpuSet()
    assert dict(topo.pcie_roots) == {}


def test_optional_topology_files_absent(root: Path) -> None:
    for cpu in range(8):
        for name in ("die_id", "cluster_id"):
            (root / CPU / f"cpu{cpu}" / "topology" / name).unlink()
    topo = read_topology(root)
    assert {i.die for i in topo.cpus.values()} == {0}
    assert {i.cluster for i in topo.cpus.values()} == {None}
    assert topo.num_cores == 4


def test_node_without_distance_meminfo_or_has_memory(root: Path) -> None:
    (root / NODE / "has_memory").unlink()
    for name in ("distance", "meminfo"):
        (root / NODE / "node1" / name).unlink()
    write_file(root / NODE / "node0" / "meminfo", "garbage without a total")
    topo = read_topology(root)
    node0, node1 = topo.numa_nodes
    assert node1.distances == ()
    assert node1.memory_kib is None
    assert node1.has_memory is True, "unknown memory is assumed present"
    assert node0.memory_kib is None
    assert node0.distances == (10, 12)


def test_empty_cpulist_files_are_empty_sets(root: Path) -> None:
    write_file(root / CPU / "isolated", "")
    write_file(root / NODE / "node1" / "cpulist", "")
    topo = read_topology(root)
    assert topo.isolated == CpuSet()
    assert topo.numa_nodes[1].cpus == CpuSet()
    # Per-CPU NUMA still comes from the cpuN/nodeM links.
    assert topo.numas[1] == CpuSet.parse("2-3,6-7")
