"""Write a realistic synthetic sysfs tree for reader tests.

``write_tree(tmp_path, SysfsSpec(...))`` lays out, under ``<tmp>/sys``, what a Linux kernel
shows for the described machine and returns that ``sys`` directory (pass it to
``read_topology``). The machine itself is described with the same knobs as
``tests.support.topologies.make_topology`` (sockets, NUMA nodes per socket, cores per node, SMT
width, dies, L3 sharing, hybrid, clusters, CPU-less and memory-less nodes, PCIe roots);
``SysfsSpec.expected()`` returns the in-memory ``Topology`` the reader should produce, which
makes a reader round-trip test possible. Concrete-value tests should still spell out numbers.

What is written, per the kernel's layout:

- ``devices/system/cpu/{online,offline,present,possible,isolated,kernel_max}``,
  ``smt/{control,active}``;
- for every present CPU a ``cpuN`` directory with ``online`` (not for cpu0, as on x86) and a
  ``nodeM`` symlink to ``../../node/nodeM``; online CPUs also get ``topology/`` (package, die,
  core, cluster ids and every ``*_list`` / mask file, listing ONLINE siblings only) and
  ``cache/index0-3`` (L1d, L1i, L2, L3 with ``id``, ``level``, ``type``, ``shared_cpu_list``,
  ``shared_cpu_map``, ``size``). Offline CPUs keep their directory with ``online`` = 0 but lose
  ``topology/`` and ``cache/`` — exactly what a real kernel does on hot-unplug;
- ``devices/system/node/{online,possible,has_cpu,has_memory,has_normal_memory}`` and
  ``nodeN/{cpulist,cpumap,distance,meminfo}`` (online CPUs only in ``cpulist``);
- ``devices/cpu_core/cpus`` and ``devices/cpu_atom/cpus`` on hybrid machines;
- ``devices/pciDDDD:BB/pci_bus/DDDD:BB/{cpulistaffinity,cpuaffinity}`` per PCIe root, plus
  decoys the reader must ignore (``devices/platform``, a root without ``pci_bus``).

Format knobs (``online_file``, ``present_file``, ``node_links``, ``node_dir``,
``has_memory_file``, ``cache_ids``, ``caches``, ``die_id_file``, ``cluster_files``,
``hybrid_files``) switch individual files off to mimic older kernels or odd platforms.
``smt="off"`` or ``"forceoff"`` offlines every secondary thread as the kernel does.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dracpu.core.cpuset import CpuSet
from dracpu.core.topology import CoreType, CpuInfo, Topology
from tests.support.topologies import L3Per, SiblingLayout, make_topology

__all__ = ["SysfsSpec", "cpumask_hex", "scratch_dir", "write_file", "write_tree"]

NO_CLUSTER = 65535

MaskFn = Callable[[CpuSet], str]
GroupFn = Callable[[int, str], CpuSet]


@dataclass(frozen=True)
class SysfsSpec:
    """A machine plus the sysfs format details to write it with; see the module docstring."""

    sockets: int = 1
    numa_per_socket: int = 1
    cores_per_numa: int | tuple[int, ...] = 4
    threads: int = 2
    dies_per_socket: int = 1
    sibling_layout: SiblingLayout = "spread"
    l3_per: L3Per = "socket"
    hybrid: bool | int = False
    cluster_size: int | None = None
    offline: tuple[int, ...] = ()
    smt: str | None = "auto"
    """``smt/control`` text; ``"auto"`` → on/notsupported; ``None`` → no ``smt`` directory."""
    isolated: tuple[int, ...] = ()
    cpuless_nodes: int = 0
    memoryless_nodes: tuple[int, ...] = ()
    pcie_roots_per_socket: int = 0
    memory_kib_per_node: int = 16 * 1024 * 1024
    # Format knobs.
    online_file: bool = True
    present_file: bool = True
    node_links: bool = True
    node_dir: bool = True
    has_memory_file: bool = True
    cache_ids: bool = True
    caches: bool = True
    die_id_file: bool = True
    cluster_files: bool = True
    hybrid_files: bool = True
    extra_files: dict[str, str] = field(default_factory=dict)
    """Relative path under ``sys/`` → content, written last (to plant bad values)."""

    def hardware(self) -> Topology:
        """The machine with every present CPU online (facts for offline CPUs come from here)."""
        return self._build(offline=(), smt_control="on")

    def offline_cpus(self) -> CpuSet:
        """CPUs the tree shows offline: ``offline`` plus secondary threads when SMT is off."""
        offline = CpuSet.of(self.offline)
        if self.smt in ("off", "forceoff"):
            hw = self.hardware()
            for siblings in hw.cores.values():
                offline |= siblings - CpuSet.of([siblings.first()])
        return offline

    def smt_control(self) -> str | None:
        """The ``smt/control`` text written (``None``: file absent)."""
        if self.smt == "auto":
            return "on" if self.threads > 1 else "notsupported"
        return self.smt

    def expected(self) -> Topology:
        """The ``Topology`` a correct reader returns for this tree (cache ids and NUMA as
        written; use concrete-value tests for the format-knob fallbacks)."""
        return self._build(offline=self.offline_cpus().to_list(), smt_control=self.smt_control())

    def _build(self, *, offline: Iterable[int], smt_control: str | None) -> Topology:
        return make_topology(
            self.sockets,
            self.numa_per_socket,
            self.cores_per_numa,
            self.threads,
            offline=offline,
            hybrid=self.hybrid,
            l3_per=self.l3_per,
            dies_per_socket=self.dies_per_socket,
            cluster_size=self.cluster_size,
            sibling_layout=self.sibling_layout,
            cpuless_nodes=self.cpuless_nodes,
            memoryless_nodes=self.memoryless_nodes,
            isolated=self.isolated,
            smt_control=smt_control,
            pcie_roots_per_socket=self.pcie_roots_per_socket,
            memory_kib_per_node=self.memory_kib_per_node,
        )


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary directory on tmpfs (``/dev/shm``) when writable, else the default temp dir.

    A tree is hundreds of tiny files; on a busy ext4 disk creating them costs ~2 ms each, on
    tmpfs ~0.05 ms, which is the difference between a 30 s and a 1 s test module.
    """
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="dracpu-sysfs-", dir=base) as tmp:
        yield Path(tmp)


def write_file(path: Path, text: str) -> None:
    """Write ``text`` plus a newline, creating parent directories (sysfs files end in \\n)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


class _Batch:
    """Collects files and creates each directory once: trees have thousands of small files."""

    def __init__(self) -> None:
        self.files: dict[Path, str] = {}

    def __call__(self, path: Path, text: str) -> None:
        self.files[path] = text + "\n"

    def flush(self) -> None:
        made: set[Path] = set()
        for path, text in self.files.items():
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            with open(path, "w") as f:
                f.write(text)
        self.files.clear()


def cpumask_hex(cpus: CpuSet, nbits: int) -> str:
    """The kernel's ``%*pb`` mask format: comma-separated 32-bit hex words, high word first."""
    words = max(1, -(-nbits // 32))
    return ",".join(f"{(cpus.mask >> (32 * w)) & 0xFFFFFFFF:08x}" for w in reversed(range(words)))


def write_tree(base: Path, spec: SysfsSpec) -> Path:
    """Write the tree for ``spec`` under ``base/sys`` and return that ``sys`` directory."""
    root = base / "sys"
    out = _Batch()
    hw = spec.hardware()
    expected = spec.expected()
    offline = spec.offline_cpus()
    present = hw.present
    online = present - offline
    nbits = max(present) + 1 if present else 1
    cpu_dir = root / "devices" / "system" / "cpu"
    node_dir = root / "devices" / "system" / "node"
    cpu_dir.mkdir(parents=True)

    def mask(cpus: CpuSet) -> str:
        return cpumask_hex(cpus, nbits)

    # Global CPU files.
    if spec.online_file:
        out(cpu_dir / "online", str(online))
        out(cpu_dir / "offline", str(offline))
    if spec.present_file:
        out(cpu_dir / "present", str(present))
    out(cpu_dir / "possible", str(present))
    out(cpu_dir / "kernel_max", "8191")
    out(cpu_dir / "isolated", str(CpuSet.of(spec.isolated)))
    control = spec.smt_control()
    if control is not None:
        out(cpu_dir / "smt" / "control", control)
        out(cpu_dir / "smt" / "active", "1" if expected.smt_enabled else "0")

    core_index = {key: i for i, key in enumerate(hw.cores)}

    def online_group(key: int, attr: str) -> CpuSet:
        return CpuSet.of(c for c, i in hw.cpus.items() if getattr(i, attr) == key) & online

    for cpu in present:
        info = hw.cpus[cpu]
        d = cpu_dir / f"cpu{cpu}"
        d.mkdir()
        if cpu != 0 or cpu in offline:
            out(d / "online", "0" if cpu in offline else "1")
        if spec.node_links and spec.node_dir:
            os.symlink(f"../../node/node{info.numa}", d / f"node{info.numa}")
        if cpu in offline:
            continue  # the kernel removes topology/ and cache/ of an offline CPU
        _write_cpu_topology(out, d / "topology", info, hw, online, mask, spec)
        if spec.caches:
            _write_caches(out, d / "cache", info, hw, online, mask, spec, core_index, online_group)

    # NUMA nodes.
    if spec.node_dir:
        node_ids = CpuSet.of(n.id for n in expected.numa_nodes)
        with_cpus = CpuSet.of(n.id for n in expected.numa_nodes if n.cpus)
        with_memory = CpuSet.of(n.id for n in expected.numa_nodes if n.has_memory)
        for name, value in (
            ("online", node_ids),
            ("possible", node_ids),
            ("has_cpu", with_cpus),
            ("has_normal_memory", with_memory),
        ):
            out(node_dir / name, str(value))
        if spec.has_memory_file:
            out(node_dir / "has_memory", str(with_memory))
        for node in expected.numa_nodes:
            nd = node_dir / f"node{node.id}"
            out(nd / "cpulist", str(node.cpus))
            out(nd / "cpumap", mask(node.cpus))
            out(nd / "distance", " ".join(str(x) for x in node.distances))
            kib = node.memory_kib or 0
            out(
                nd / "meminfo",
                f"Node {node.id} MemTotal:       {kib} kB\n"
                f"Node {node.id} MemFree:        {kib // 2} kB\n"
                f"Node {node.id} MemUsed:        {kib - kib // 2} kB",
            )

    # Hybrid PMU device lists (every present CPU of the type, as the kernel reports them).
    if spec.hybrid_files and hw.is_hybrid:
        devices = root / "devices"
        p_cores = CpuSet.of(c for c, i in hw.cpus.items() if i.core_type is CoreType.PERFORMANCE)
        e_cores = CpuSet.of(c for c, i in hw.cpus.items() if i.core_type is CoreType.EFFICIENCY)
        out(devices / "cpu_core" / "cpus", str(p_cores))
        out(devices / "cpu_atom" / "cpus", str(e_cores))

    # PCIe roots, from the expected topology (affinity = online CPUs of the root's node).
    expected_roots = expected.pcie_roots
    for name, cpus in expected_roots.items():
        bus = name.removeprefix("pci")
        bus_dir = root / "devices" / name / "pci_bus" / bus
        out(bus_dir / "cpulistaffinity", str(cpus))
        out(bus_dir / "cpuaffinity", mask(cpus))
        out(root / "devices" / name / f"{bus}:00.0" / "vendor", "0x8086")
    if expected_roots:
        (root / "devices" / "platform" / "serial8250").mkdir(parents=True)
        (root / "devices" / "pci0000:ff").mkdir()  # a host bridge with no pci_bus: ignored

    out.flush()
    for rel, text in spec.extra_files.items():
        write_file(root / rel, text)
    return root


def _write_cpu_topology(
    out: _Batch,
    topo: Path,
    info: CpuInfo,
    hw: Topology,
    online: CpuSet,
    mask: MaskFn,
    spec: SysfsSpec,
) -> None:
    siblings = hw.cores[info.core_key] & online
    package = hw.sockets[info.socket] & online
    die = hw.dies[(info.socket, info.die)] & online
    cluster_cpus = siblings
    if info.cluster is not None:
        same = (
            c for c, i in hw.cpus.items() if (i.socket, i.cluster) == (info.socket, info.cluster)
        )
        cluster_cpus = CpuSet.of(same) & online
    out(topo / "physical_package_id", str(info.socket))
    if spec.die_id_file:
        out(topo / "die_id", str(info.die))
        out(topo / "die_cpus_list", str(die))
        out(topo / "die_cpus", mask(die))
    out(topo / "core_id", str(info.core_id))
    if spec.cluster_files:
        cluster = NO_CLUSTER if info.cluster is None else info.cluster
        out(topo / "cluster_id", str(cluster))
        out(topo / "cluster_cpus_list", str(cluster_cpus))
        out(topo / "cluster_cpus", mask(cluster_cpus))
    for name, cpus in (
        ("thread_siblings", siblings),
        ("core_cpus", siblings),
        ("core_siblings", package),
        ("package_cpus", package),
    ):
        out(topo / f"{name}_list", str(cpus))
        out(topo / name, mask(cpus))


def _write_caches(
    out: _Batch,
    cache: Path,
    info: CpuInfo,
    hw: Topology,
    online: CpuSet,
    mask: MaskFn,
    spec: SysfsSpec,
    core_index: dict[tuple[int, int, int], int],
    online_group: GroupFn,
) -> None:
    core_cpus = hw.cores[info.core_key] & online
    l1_id = core_index[info.core_key]
    entries: list[tuple[str, int, str, int | None, CpuSet, str]] = [
        ("index0", 1, "Data", l1_id, core_cpus, "48K"),
        ("index1", 1, "Instruction", l1_id, core_cpus, "32K"),
    ]
    if info.l2 is not None:
        entries.append(("index2", 2, "Unified", info.l2, online_group(info.l2, "l2"), "2048K"))
    if info.l3 is not None:
        entries.append(("index3", 3, "Unified", info.l3, online_group(info.l3, "l3"), "36864K"))
    for name, level, kind, cache_id, shared, size in entries:
        d = cache / name
        out(d / "level", str(level))
        out(d / "type", kind)
        if spec.cache_ids and cache_id is not None:
            out(d / "id", str(cache_id))
        out(d / "shared_cpu_list", str(shared))
        out(d / "shared_cpu_map", mask(shared))
        out(d / "size", size)
        out(d / "coherency_line_size", "64")
