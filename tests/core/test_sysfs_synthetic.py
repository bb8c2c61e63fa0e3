"""The sysfs reader on generated trees: offline CPUs, SMT off, 4-way SMT, CPU-less and
memory-less NUMA nodes, SNC, clusters, hybrid, kernels without ``online``, PCIe roots, and
NUMA from ``cpuN/nodeM`` links versus node cpulists.

CPU numbering of the writer (as on x86 Linux): with ``sibling_layout="spread"`` thread 0 of
every core comes first, then thread 1 of every core; so 1 socket x 4 cores x SMT-2 has cores
{0,4} {1,5} {2,6} {3,7}. ``"adjacent"`` numbers siblings consecutively: {0,1} {2,3} ...
Expected values below are written out by hand from that rule.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dracpu.core.cpuset import CpuSet
from dracpu.core.topology import CoreType, Topology
from dracpu.sysfs import read_topology
from tests.support.sysfs_tree import SysfsSpec, scratch_dir, write_file, write_tree


def s(text: str) -> CpuSet:
    return CpuSet.parse(text)


def sibling_sets(topo: Topology) -> list[str]:
    return sorted((str(c) for c in topo.cores.values()), key=lambda t: CpuSet.parse(t).first())


def read(sysfs_tmp: Path, spec: SysfsSpec) -> Topology:
    return read_topology(write_tree(sysfs_tmp, spec))


CPU = Path("devices/system/cpu")
NODE = Path("devices/system/node")


# Offline CPUs.


def test_one_offline_thread(sysfs_tmp: Path) -> None:
    root = write_tree(sysfs_tmp, SysfsSpec(cores_per_numa=4, threads=2, offline=(5,)))
    # As on a real kernel the offline CPU keeps its directory but loses topology/ and cache/.
    assert (root / CPU / "cpu5" / "online").read_text() == "0\n"
    assert not (root / CPU / "cpu5" / "topology").exists()
    assert not (root / CPU / "cpu5" / "cache").exists()
    topo = read_topology(root)
    assert topo.online == s("0-4,6-7")
    assert topo.offline == s("5")
    assert topo.present == s("0-7")
    assert 5 not in topo.cpus
    assert sibling_sets(topo) == ["0,4", "1", "2,6", "3,7"]
    assert topo.num_cores == 4
    assert topo.threads_per_core == 2
    assert topo.uniform_threads_per_core is None
    assert topo.numa_nodes[0].cpus == s("0-4,6-7")
    assert topo.l3_groups == {0: s("0-4,6-7")}


def test_unevenly_offlined_two_sockets(sysfs_tmp: Path) -> None:
    # 2 sockets x 4 cores x SMT-2: thread 0 = CPUs 0-7 (0-3 socket 0), thread 1 = CPUs 8-15.
    # Offline a whole core (3 and 11) on socket 0 and one thread (12) on socket 1.
    topo = read(sysfs_tmp, SysfsSpec(sockets=2, cores_per_numa=4, offline=(3, 11, 12)))
    assert topo.offline == s("3,11-12")
    assert topo.sockets == {0: s("0-2,8-10"), 1: s("4-7,13-15")}
    assert topo.num_cores == 7
    assert sibling_sets(topo) == ["0,8", "1,9", "2,10", "4", "5,13", "6,14", "7,15"]
    assert {k: len(v) for k, v in topo.numas.items()} == {0: 6, 1: 7}


# SMT.


def test_smt_off(sysfs_tmp: Path) -> None:
    topo = read(sysfs_tmp, SysfsSpec(cores_per_numa=4, threads=2, smt="off"))
    assert topo.smt_control == "off"
    assert topo.online == s("0-3")
    assert topo.offline == s("4-7")
    assert topo.threads_per_core == 1
    assert topo.uniform_threads_per_core == 1
    assert topo.smt_enabled is False
    assert topo.num_cores == 4


def test_smt_not_supported(sysfs_tmp: Path) -> None:
    topo = read(sysfs_tmp, SysfsSpec(cores_per_numa=3, threads=1))
    assert topo.smt_control == "notsupported"
    assert sibling_sets(topo) == ["0", "1", "2"]
    assert topo.threads_per_core == 1


def test_no_smt_directory(sysfs_tmp: Path) -> None:
    assert read(sysfs_tmp, SysfsSpec(smt=None)).smt_control is None


def test_four_way_smt_adjacent(sysfs_tmp: Path) -> None:
    topo = read(
        sysfs_tmp, SysfsSpec(sockets=2, cores_per_numa=2, threads=4, sibling_layout="adjacent")
    )
    assert topo.online == s("0-15")
    assert sibling_sets(topo) == ["0-3", "4-7", "8-11", "12-15"]
    assert topo.threads_per_core == 4
    assert topo.uniform_threads_per_core == 4
    # core_id restarts on socket 1, yet the cores stay distinct.
    assert topo.cpus[0].core_id == topo.cpus[8].core_id == 0
    assert topo.core_of[0] == (0, 0, 0)
    assert topo.core_of[8] == (1, 0, 0)
    assert topo.machine_core_id(9) == 8


def test_four_way_smt_spread(sysfs_tmp: Path) -> None:
    topo = read(sysfs_tmp, SysfsSpec(cores_per_numa=2, threads=4))
    assert sibling_sets(topo) == ["0,2,4,6", "1,3,5,7"]
    assert topo.siblings_of(5) == s("1,3,5,7")


def test_four_way_smt_partially_offline(sysfs_tmp: Path) -> None:
    topo = read(
        sysfs_tmp,
        SysfsSpec(cores_per_numa=2, threads=4, sibling_layout="adjacent", offline=(2, 3, 7)),
    )
    assert sibling_sets(topo) == ["0-1", "4-6"]
    assert topo.threads_per_core == 3
    assert topo.uniform_threads_per_core is None


# NUMA.


def test_cpuless_numa_nodes(sysfs_tmp: Path) -> None:
    topo = read(sysfs_tmp, SysfsSpec(sockets=2, cores_per_numa=2, threads=1, cpuless_nodes=2))
    assert [n.id for n in topo.numa_nodes] == [0, 1, 2, 3]
    assert [str(n.cpus) for n in topo.numa_nodes] == ["0-1", "2-3", "", ""]
    assert [n.has_memory for n in topo.numa_nodes] == [True, True, True, True]
    assert topo.numa_nodes[2].distances == (17, 28, 10, 28)
    assert topo.numa_nodes[3].distances == (28, 17, 28, 10)
    assert topo.numa_nodes[0].distances == (10, 21, 17, 28)
    assert topo.numas == {0: s("0-1"), 1: s("2-3")}


def test_memoryless_numa_node(sysfs_tmp: Path) -> None:
    topo = read(
        sysfs_tmp,
        SysfsSpec(sockets=2, cores_per_numa=2, threads=1, memoryless_nodes=(1,)),
    )
    assert [n.has_memory for n in topo.numa_nodes] == [True, False]
    assert topo.numa_nodes[1].memory_kib == 0
    assert topo.numa_nodes[1].cpus == s("2-3")
    assert topo.numa_nodes[0].memory_kib == 16 * 1024 * 1024


def test_memoryless_node_without_has_memory_file(sysfs_tmp: Path) -> None:
    # Fallback: meminfo's MemTotal of 0 kB says the node has no memory.
    spec = SysfsSpec(
        sockets=2, cores_per_numa=2, threads=1, memoryless_nodes=(0,), has_memory_file=False
    )
    root = write_tree(sysfs_tmp, spec)
    assert not (root / NODE / "has_memory").exists()
    topo = read_topology(root)
    assert [n.has_memory for n in topo.numa_nodes] == [False, True]


def test_has_memory_file_wins_over_meminfo(sysfs_tmp: Path) -> None:
    spec = SysfsSpec(
        sockets=2, cores_per_numa=1, threads=1, extra_files={"devices/system/node/has_memory": "1"}
    )
    topo = read(sysfs_tmp, spec)
    assert [n.has_memory for n in topo.numa_nodes] == [False, True]
    assert topo.numa_nodes[0].memory_kib == 16 * 1024 * 1024


def test_snc_l3_spans_two_numa_nodes(sysfs_tmp: Path) -> None:
    # 2 sockets x 2 SNC nodes x 2 cores x SMT-2; thread 0 = CPUs 0-7, thread 1 = CPUs 8-15.
    topo = read(sysfs_tmp, SysfsSpec(sockets=2, numa_per_socket=2, cores_per_numa=2))
    assert topo.numas == {
        0: s("0-1,8-9"),
        1: s("2-3,10-11"),
        2: s("4-5,12-13"),
        3: s("6-7,14-15"),
    }
    assert topo.l3_groups == {0: s("0-3,8-11"), 1: s("4-7,12-15")}
    assert topo.numas[0] < topo.l3_groups[0]
    assert topo.numas[0] | topo.numas[1] == topo.l3_groups[0]
    assert topo.sockets == {0: s("0-3,8-11"), 1: s("4-7,12-15")}
    assert topo.numa_nodes[0].distances == (10, 12, 21, 21)
    assert topo.numa_nodes_in_sockets([1]) == {2, 3}


def test_l3_per_ccx_uneven(sysfs_tmp: Path) -> None:
    # 5 cores, L3 shared by every 2 cores: groups of 2, 2, 1 cores (adjacent SMT-2 ids).
    topo = read(sysfs_tmp, SysfsSpec(cores_per_numa=5, l3_per=2, sibling_layout="adjacent"))
    assert sorted(str(g) for g in topo.l3_groups.values()) == ["0-3", "4-7", "8-9"]
    assert len(topo.l2_groups) == 5


def test_numa_from_links_wins_over_node_cpulist(sysfs_tmp: Path) -> None:
    # node0's cpulist wrongly claims CPU 2; the cpu2/node1 link says otherwise.
    spec = SysfsSpec(
        sockets=2,
        cores_per_numa=2,
        threads=1,
        extra_files={"devices/system/node/node0/cpulist": "0-2"},
    )
    topo = read(sysfs_tmp, spec)
    assert topo.cpus[2].numa == 1
    assert topo.numas == {0: s("0-1"), 1: s("2-3")}


def test_numa_fallback_to_node_cpulist_without_links(sysfs_tmp: Path) -> None:
    spec = SysfsSpec(sockets=2, numa_per_socket=2, cores_per_numa=2, node_links=False)
    root = write_tree(sysfs_tmp, spec)
    assert not any(p.name.startswith("node") for p in (root / CPU / "cpu0").iterdir())
    topo = read_topology(root)
    assert topo.numas == {
        0: s("0-1,8-9"),
        1: s("2-3,10-11"),
        2: s("4-5,12-13"),
        3: s("6-7,14-15"),
    }


def test_no_node_directory_means_one_node(sysfs_tmp: Path) -> None:
    topo = read(sysfs_tmp, SysfsSpec(sockets=2, cores_per_numa=2, node_dir=False))
    assert {i.numa for i in topo.cpus.values()} == {0}
    assert topo.numas == {0: s("0-7")}
    assert len(topo.numa_nodes) == 1
    assert topo.numa_nodes[0].id == 0
    assert topo.numa_nodes[0].cpus == s("0-7")
    assert topo.numa_nodes[0].has_memory is True


# Clusters, dies, caches.


def test_clusters(sysfs_tmp: Path) -> None:
    topo = read(sysfs_tmp, SysfsSpec(cores_per_numa=8, threads=1, cluster_size=4))
    assert [topo.cpus[c].cluster for c in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_cluster_65535_means_none(sysfs_tmp: Path) -> None:
    root = write_tree(sysfs_tmp, SysfsSpec(cores_per_numa=2, threads=1))
    assert (root / CPU / "cpu0" / "topology" / "cluster_id").read_text() == "65535\n"
    topo = read_topology(root)
    assert [i.cluster for i in topo.cpus.values()] == [None, None]


def test_no_cluster_files(sysfs_tmp: Path) -> None:
    topo = read(sysfs_tmp, SysfsSpec(cores_per_numa=4, cluster_size=2, cluster_files=False))
    assert {i.cluster for i in topo.cpus.values()} == {None}


def test_dies(sysfs_tmp: Path) -> None:
    # 1 socket, 4 cores split into 2 dies; SMT-2 spread: cores {0,4} {1,5} | {2,6} {3,7}.
    topo = read(sysfs_tmp, SysfsSpec(cores_per_numa=4, dies_per_socket=2, l3_per="die"))
    assert topo.dies == {(0, 0): s("0-1,4-5"), (0, 1): s("2-3,6-7")}
    assert topo.l3_groups == {0: s("0-1,4-5"), 1: s("2-3,6-7")}


def test_no_die_id_file(sysfs_tmp: Path) -> None:
    topo = read(sysfs_tmp, SysfsSpec(cores_per_numa=4, dies_per_socket=2, die_id_file=False))
    assert topo.dies == {(0, 0): s("0-7")}
    # Without die ids the core key still holds: core_id is unique within the package.
    assert topo.num_cores == 4


def test_cache_ids_fall_back_to_first_sharing_cpu(sysfs_tmp: Path) -> None:
    spec = SysfsSpec(sockets=2, numa_per_socket=2, cores_per_numa=2, cache_ids=False)
    root = write_tree(sysfs_tmp, spec)
    assert not (root / CPU / "cpu0" / "cache" / "index3" / "id").exists()
    topo = read_topology(root)
    assert topo.l3_groups == {0: s("0-3,8-11"), 4: s("4-7,12-15")}
    assert topo.cpus[9].l2 == 1
    assert topo.l2_groups[1] == s("1,9")


# Hybrid.


def test_hybrid_split(sysfs_tmp: Path) -> None:
    # 2 SMT-2 P-cores (CPUs 0-3) + 4 E-cores (CPUs 4-7) sharing one L2.
    spec = SysfsSpec(cores_per_numa=6, hybrid=4, sibling_layout="adjacent")
    root = write_tree(sysfs_tmp, spec)
    assert (root / "devices" / "cpu_core" / "cpus").read_text() == "0-3\n"
    assert (root / "devices" / "cpu_atom" / "cpus").read_text() == "4-7\n"
    topo = read_topology(root)
    assert topo.is_hybrid
    assert topo.cpus_of_type(CoreType.PERFORMANCE) == s("0-3")
    assert topo.cpus_of_type(CoreType.EFFICIENCY) == s("4-7")
    assert topo.cpus_of_type(CoreType.STANDARD) == s("")
    assert sibling_sets(topo) == ["0-1", "2-3", "4", "5", "6", "7"]
    assert sorted(str(g) for g in topo.l2_groups.values()) == ["0-1", "2-3", "4-7"]
    assert topo.cpus[4].cluster == topo.cpus[7].cluster
    assert topo.cpus[4].cluster is not None
    assert topo.uniform_threads_per_core is None


def test_hybrid_with_offline_e_core(sysfs_tmp: Path) -> None:
    topo = read(
        sysfs_tmp, SysfsSpec(cores_per_numa=6, hybrid=4, sibling_layout="adjacent", offline=(7,))
    )
    assert topo.cpus_of_type(CoreType.EFFICIENCY) == s("4-6")
    assert topo.offline == s("7")


def test_hybrid_files_absent_means_standard(sysfs_tmp: Path) -> None:
    spec = SysfsSpec(cores_per_numa=6, hybrid=4, sibling_layout="adjacent", hybrid_files=False)
    topo = read(sysfs_tmp, spec)
    assert not topo.is_hybrid
    assert topo.cpus_of_type(CoreType.STANDARD) == s("0-7")


def test_only_cpu_core_list_means_standard(sysfs_tmp: Path) -> None:
    # A hybrid-capable kernel on a P-core-only part publishes cpu_core but no cpu_atom.
    spec = SysfsSpec(cores_per_numa=2, extra_files={"devices/cpu_core/cpus": "0-3"})
    topo = read(sysfs_tmp, spec)
    assert not topo.is_hybrid
    assert topo.cpus_of_type(CoreType.STANDARD) == s("0-3")


# Kernels without the global online file.


def test_no_online_file_uses_per_cpu_flags(sysfs_tmp: Path) -> None:
    spec = SysfsSpec(cores_per_numa=2, threads=2, offline=(3,), online_file=False)
    root = write_tree(sysfs_tmp, spec)
    assert not (root / CPU / "online").exists()
    assert not (root / CPU / "offline").exists()
    topo = read_topology(root)
    assert topo.online == s("0-2")
    assert topo.offline == s("3")
    assert topo.present == s("0-3")


def test_no_online_and_no_present_file(sysfs_tmp: Path) -> None:
    spec = SysfsSpec(cores_per_numa=2, offline=(1,), online_file=False, present_file=False)
    topo = read(sysfs_tmp, spec)
    assert topo.online == s("0,2-3")
    assert topo.offline == s("1")
    assert topo.present == s("0-3")


def test_no_online_files_at_all_means_all_online(sysfs_tmp: Path) -> None:
    root = write_tree(sysfs_tmp, SysfsSpec(cores_per_numa=2, online_file=False))
    for cpu in range(1, 4):
        (root / CPU / f"cpu{cpu}" / "online").unlink()
    assert read_topology(root).online == s("0-3")


def test_offline_file_beyond_present_is_not_offline(sysfs_tmp: Path) -> None:
    # The kernel's offline file also lists possible-but-absent CPUs (here 4-7).
    spec = SysfsSpec(
        cores_per_numa=2,
        extra_files={"devices/system/cpu/offline": "4-7", "devices/system/cpu/possible": "0-7"},
    )
    topo = read(sysfs_tmp, spec)
    assert topo.offline == s("")
    assert topo.present == s("0-3")


# Isolation and PCIe.


def test_isolated(sysfs_tmp: Path) -> None:
    topo = read(sysfs_tmp, SysfsSpec(cores_per_numa=4, isolated=(2, 3, 6, 7)))
    assert topo.isolated == s("2-3,6-7")


def test_pcie_roots(sysfs_tmp: Path) -> None:
    # 2 sockets x 2 cores x SMT-2 (node 0 = CPUs 0-1,4-5); two roots per socket.
    spec = SysfsSpec(sockets=2, cores_per_numa=2, pcie_roots_per_socket=2)
    root = write_tree(sysfs_tmp, spec)
    assert (root / "devices" / "pci0000:ff").is_dir()  # decoy without pci_bus
    topo = read_topology(root)
    assert dict(topo.pcie_roots) == {
        "pci0000:00": s("0-1,4-5"),
        "pci0000:40": s("0-1,4-5"),
        "pci0000:80": s("2-3,6-7"),
        "pci0000:c0": s("2-3,6-7"),
    }


def test_pcie_root_with_wide_domain(sysfs_tmp: Path) -> None:
    # Intel VMD puts its root ports in domains above 0xffff.
    spec = SysfsSpec(
        cores_per_numa=2,
        extra_files={"devices/pci10000:00/pci_bus/10000:00/cpulistaffinity": "0-3"},
    )
    assert dict(read(sysfs_tmp, spec).pcie_roots) == {"pci10000:00": s("0-3")}


def test_pcie_root_without_affinity_file_is_skipped(sysfs_tmp: Path) -> None:
    root = write_tree(sysfs_tmp, SysfsSpec(cores_per_numa=2))
    (root / "devices" / "pci0000:00" / "pci_bus" / "0000:00").mkdir(parents=True)
    write_file(root / "devices" / "pci0000:00" / "0000:00:00.0" / "vendor", "0x8086")
    assert dict(read_topology(root).pcie_roots) == {}


# Round trip: any generated machine written to sysfs reads back as the same Topology.

specs = st.builds(
    SysfsSpec,
    sockets=st.integers(1, 3),
    numa_per_socket=st.integers(1, 2),
    cores_per_numa=st.integers(1, 4),
    threads=st.sampled_from([1, 2, 4]),
    dies_per_socket=st.sampled_from([1, 2]),
    sibling_layout=st.sampled_from(["spread", "adjacent"]),
    l3_per=st.one_of(st.sampled_from(["socket", "numa", "die", "none"]), st.integers(1, 3)),
    hybrid=st.one_of(st.just(False), st.integers(1, 2)),
    cluster_size=st.one_of(st.none(), st.integers(1, 3)),
    offline=st.lists(st.integers(1, 20), max_size=4, unique=True).map(tuple),
    smt=st.sampled_from(["auto", "off", None]),
    isolated=st.lists(st.integers(0, 20), max_size=3).map(tuple),
    cpuless_nodes=st.integers(0, 2),
    memoryless_nodes=st.lists(st.integers(0, 1), max_size=1).map(tuple),
    pcie_roots_per_socket=st.integers(0, 2),
    online_file=st.booleans(),
    node_links=st.booleans(),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
def test_round_trip(spec: SysfsSpec) -> None:
    present = spec.hardware().present
    if not CpuSet.of(spec.offline) <= present - CpuSet.of([0]):
        spec = SysfsSpec(**{**spec.__dict__, "offline": ()})
    with scratch_dir() as tmp:
        got = read_topology(write_tree(tmp, spec))
    assert got == spec.expected()


def test_cpufreq_base_and_max(sysfs_tmp: Path) -> None:
    # cpu0: a cpufreq directory (as a live kernel's link resolves); cpu1: no base_frequency,
    # ACPI CPPC's nominal_freq in MHz instead; cpu2: nothing; cpu3: the link stored as text
    # (as captures store it) pointing at a shared policy directory.
    cpu = "devices/system/cpu"
    extra = {
        f"{cpu}/cpu0/cpufreq/base_frequency": "2000000\n",
        f"{cpu}/cpu0/cpufreq/cpuinfo_max_freq": "3700000\n",
        f"{cpu}/cpu1/cpufreq/cpuinfo_max_freq": "3500000\n",
        f"{cpu}/cpu1/acpi_cppc/nominal_freq": "2100\n",
        f"{cpu}/cpu3/cpufreq": "../cpufreq/policy3\n",
        f"{cpu}/cpufreq/policy3/base_frequency": "1800000\n",
        f"{cpu}/cpufreq/policy3/cpuinfo_max_freq": "0\n",
    }
    topo = read(sysfs_tmp, SysfsSpec(cores_per_numa=2, threads=2, extra_files=extra))
    freqs = [(topo.cpus[c].base_freq_khz, topo.cpus[c].max_freq_khz) for c in range(4)]
    # A 0 kHz maximum means unknown.
    assert freqs == [(2000000, 3700000), (2100000, 3500000), (None, None), (1800000, None)]


def test_cpufreq_link_outside_the_cpu_directory_is_ignored(sysfs_tmp: Path) -> None:
    extra = {
        "devices/system/cpu/cpu0/cpufreq": "../../../../etc\n",
        "etc/base_frequency": "1000\n",
    }
    topo = read(sysfs_tmp, SysfsSpec(cores_per_numa=1, threads=1, extra_files=extra))
    assert topo.cpus[0].base_freq_khz is None
