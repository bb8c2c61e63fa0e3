"""Read a node's CPU topology from a sysfs tree (``/sys`` by default), read-only.

Required files missing → ``TopologyError`` naming the path. Optional ones (caches, clusters,
hybrid core lists, NUMA nodes, isolation, SMT control, PCIe affinity, cpufreq) degrade to
defaults.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dracpu.core.cpuset import CpuSet
from dracpu.core.topology import CoreType, CpuInfo, NumaNode, Topology
from dracpu.errors import CpuSetParseError, TopologyError

DEFAULT_ROOT = Path("/sys")
NO_CLUSTER = 65535
"""``cluster_id`` value the kernel reports when the platform has no clusters."""

_CPU_DIR = re.compile(r"cpu(\d+)")
_NODE_DIR = re.compile(r"node(\d+)")
_PCI_ROOT = re.compile(r"pci([0-9a-f]{4,8}):([0-9a-f]{2})")
"""A PCI host bridge directory; domains wider than 4 digits exist (Intel VMD: ``pci10000:00``)."""


class SysfsReader:
    """Reads topology facts under one sysfs root (the directory that holds ``devices/``)."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = root
        self._cpu_dir = root / "devices" / "system" / "cpu"
        self._node_dir = root / "devices" / "system" / "node"
        self._known_caches: dict[tuple[int, int], int] = {}
        self._known_policies: dict[str, tuple[int | None, int | None]] = {}

    def read_topology(self) -> Topology:
        """Read the whole topology; raises ``TopologyError`` naming the first unreadable path."""
        if not self._cpu_dir.is_dir():
            raise TopologyError("not a sysfs tree (no CPU directory)", path=str(self._cpu_dir))
        dirs = self._cpu_dirs()
        online = self._online(dirs)
        without_dir = online - CpuSet.of(dirs)
        if without_dir:
            raise TopologyError(
                f"online CPUs {without_dir} have no cpuN directory",
                path=str(self._cpu_dir / f"cpu{without_dir.first()}"),
            )
        # A cpuN directory exists for every present CPU, online or not. ``offline`` is what is
        # present but not online: the kernel's own ``offline`` file also lists possible-but-absent
        # CPUs, and older kernels have neither file.
        present = self._cpulist(self._cpu_dir / "present", default=CpuSet.of(dirs)) | online
        offline = present - online
        numa_of = self._numa_of_cpus(dirs, online)
        p_cores = self._cpulist(self.root / "devices" / "cpu_core" / "cpus", default=CpuSet())
        e_cores = self._cpulist(self.root / "devices" / "cpu_atom" / "cpus", default=CpuSet())
        hybrid = bool(p_cores) and bool(e_cores)
        infos: dict[int, CpuInfo] = {}
        self._known_caches = {}
        self._known_policies = {}
        for cpu in online:
            core_type = CoreType.STANDARD
            if hybrid:
                if cpu in p_cores:
                    core_type = CoreType.PERFORMANCE
                elif cpu in e_cores:
                    core_type = CoreType.EFFICIENCY
            infos[cpu] = self._cpu_info(cpu, dirs[cpu], numa_of.get(cpu, 0), core_type)
        numa_nodes = self._numa_nodes()
        if not numa_nodes:
            # No node directory (kernels built without NUMA): one node holds everything.
            numa_nodes = (NumaNode(id=0, cpus=online, has_memory=True, distances=(10,)),)
        return Topology(
            cpus=infos,
            numa_nodes=numa_nodes,
            offline=offline,
            present=present,
            isolated=self._cpulist(self._cpu_dir / "isolated", default=CpuSet()),
            smt_control=self._text(self._cpu_dir / "smt" / "control"),
            pcie_roots=self._pcie_roots(),
        )

    # CPUs

    def _cpu_dirs(self) -> dict[int, Path]:
        found = _numbered_dirs(self._cpu_dir, _CPU_DIR)
        if not found:
            raise TopologyError("no cpuN directories", path=str(self._cpu_dir))
        return found

    def _online(self, dirs: dict[int, Path]) -> CpuSet:
        listed = self._cpulist_if_present(self._cpu_dir / "online")
        if listed is not None:
            return listed
        # Older kernels: no global list; a CPU without its own ``online`` file cannot go offline.
        online = []
        for cpu, path in dirs.items():
            flag = self._text(path / "online")
            if flag is None or flag == "1":
                online.append(cpu)
        return CpuSet.of(online)

    def _cpu_info(self, cpu: int, path: Path, numa: int, core_type: CoreType) -> CpuInfo:
        topo = path / "topology"
        cluster = self._int(topo / "cluster_id", default=None)
        l2, l3 = self._cache_ids(cpu, path / "cache")
        base_khz, max_khz = self._frequencies(path)
        return CpuInfo(
            cpu=cpu,
            socket=self._required_int(topo / "physical_package_id"),
            die=self._int(topo / "die_id", default=0) or 0,
            core_id=self._required_int(topo / "core_id"),
            numa=numa,
            cluster=None if cluster in (None, NO_CLUSTER) else cluster,
            l2=l2,
            l3=l3,
            core_type=core_type,
            base_freq_khz=base_khz,
            max_freq_khz=max_khz,
        )

    def _frequencies(self, cpu_path: Path) -> tuple[int | None, int | None]:
        """(base, maximum) frequency in kHz from the CPU's cpufreq policy, each ``None`` when
        the kernel does not say. Base: ``base_frequency`` (intel_pstate), else ACPI CPPC's
        ``nominal_freq`` (MHz; amd-pstate, CPPC platforms). Maximum: ``cpuinfo_max_freq``.
        """
        policy = self._cpufreq_dir(cpu_path)
        found = self._known_policies.get(str(policy)) if policy is not None else None
        if found is not None:
            return found
        base = max_khz = None
        if policy is not None:
            base = self._int(policy / "base_frequency", default=None)
            max_khz = self._int(policy / "cpuinfo_max_freq", default=None)
        if not base:
            nominal_mhz = self._int(cpu_path / "acpi_cppc" / "nominal_freq", default=None)
            base = nominal_mhz * 1000 if nominal_mhz else None
        found = (base or None, max_khz or None)
        if policy is not None:
            self._known_policies[str(policy)] = found
        return found

    def _cpufreq_dir(self, cpu_path: Path) -> Path | None:
        """``cpuN/cpufreq``: a link to ``../cpufreq/policyM`` on a live system; captures that
        flatten links store the target as the file's text, which is followed the same way."""
        link = cpu_path / "cpufreq"
        if link.is_dir():
            return link
        target = self._text(link) if link.exists() else None
        if target and not target.startswith("/") and "\n" not in target:
            policy = Path(os.path.normpath(cpu_path / target))
            if policy.is_dir() and policy.is_relative_to(self._cpu_dir):
                return policy
        return None

    def _cache_ids(self, cpu: int, cache_dir: Path) -> tuple[int | None, int | None]:
        known = self._known_caches
        if (cpu, 2) in known and (cpu, 3) in known:
            return known[(cpu, 2)], known[(cpu, 3)]
        for entry in _scandir(cache_dir):
            if not entry.name.startswith("index"):
                continue
            index = Path(entry.path)
            level = self._int(index / "level", default=None)
            if level not in (2, 3) or (cpu, level) in known:
                continue
            if self._text(index / "type") not in ("Unified", "Data"):
                continue
            shared = self._cpulist(index / "shared_cpu_list", default=CpuSet.of([cpu]))
            # No id file (old kernels): the lowest CPU sharing the cache names it.
            cache_id = self._int(index / "id", default=None)
            if cache_id is None:
                cache_id = shared.first()
            for sibling in shared | CpuSet.of([cpu]):
                known.setdefault((sibling, level), cache_id)
        return known.get((cpu, 2)), known.get((cpu, 3))

    def _numa_of_cpus(self, dirs: dict[int, Path], online: CpuSet) -> dict[int, int]:
        numa_of: dict[int, int] = {}
        for cpu in online:
            for entry in _scandir(dirs[cpu]):
                m = _NODE_DIR.fullmatch(entry.name)
                if m:
                    numa_of[cpu] = int(m.group(1))
                    break
        missing = online - CpuSet.of(numa_of)
        if missing:
            # Some trees (and captures) lack the cpuN/nodeM link: fall back to node cpulists.
            for node_id, path in self._node_dirs().items():
                for cpu in self._cpulist(path / "cpulist", default=CpuSet()) & missing:
                    numa_of[cpu] = node_id
        return numa_of

    # NUMA nodes

    def _node_dirs(self) -> dict[int, Path]:
        return _numbered_dirs(self._node_dir, _NODE_DIR)

    def _numa_nodes(self) -> tuple[NumaNode, ...]:
        with_memory = self._cpulist_if_present(self._node_dir / "has_memory")
        nodes = []
        for node_id, path in self._node_dirs().items():
            distances = self._distances(path / "distance")
            memory_kib = _meminfo_total_kib(self._text(path / "meminfo"))
            if with_memory is not None:
                has_memory = node_id in with_memory
            else:
                has_memory = memory_kib is None or memory_kib > 0
            nodes.append(
                NumaNode(
                    id=node_id,
                    cpus=self._cpulist(path / "cpulist", default=CpuSet()),
                    has_memory=has_memory,
                    distances=distances,
                    memory_kib=memory_kib,
                )
            )
        return tuple(nodes)

    def _distances(self, path: Path) -> tuple[int, ...]:
        text = self._text(path) or ""
        try:
            return tuple(int(d) for d in text.split())
        except ValueError as exc:
            raise TopologyError(f"not a list of integers: {text!r}", path=str(path)) from exc

    # PCIe

    def _pcie_roots(self) -> dict[str, CpuSet]:
        roots: dict[str, CpuSet] = {}
        for entry in _scandir(self.root / "devices"):
            m = _PCI_ROOT.fullmatch(entry.name)
            if not m:
                continue
            bus = f"{m.group(1)}:{m.group(2)}"
            affinity = Path(entry.path) / "pci_bus" / bus / "cpulistaffinity"
            cpus = self._cpulist_if_present(affinity)
            if cpus is not None:
                roots[entry.name] = cpus
        return dict(sorted(roots.items()))

    # File helpers

    def _text(self, path: Path) -> str | None:
        try:
            with open(path, "rb") as f:
                return f.read().decode("ascii", "replace").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TopologyError(f"cannot read ({exc.strerror})", path=str(path)) from exc

    def _int(self, path: Path, *, default: int | None) -> int | None:
        text = self._text(path)
        if text is None or text == "":
            return default
        try:
            return int(text)
        except ValueError as exc:
            raise TopologyError(f"not an integer: {text!r}", path=str(path)) from exc

    def _required_int(self, path: Path) -> int:
        value = self._int(path, default=None)
        if value is None:
            problem = "required file missing" if self._text(path) is None else "required file empty"
            raise TopologyError(problem, path=str(path))
        return value

    def _cpulist(self, path: Path, *, default: CpuSet) -> CpuSet:
        found = self._cpulist_if_present(path)
        return default if found is None else found

    def _cpulist_if_present(self, path: Path) -> CpuSet | None:
        text = self._text(path)
        if text is None:
            return None
        try:
            return CpuSet.parse(text)
        except CpuSetParseError as exc:
            # The TopologyError names the path; the parse message names the bad token.
            raise TopologyError(str(exc), path=str(path)) from exc


def _numbered_dirs(parent: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    """Subdirectories named like ``cpu12`` / ``node3``, by number, in ascending order."""
    found: dict[int, Path] = {}
    for entry in _scandir(parent):
        m = pattern.fullmatch(entry.name)
        if m and entry.is_dir():
            found[int(m.group(1))] = Path(entry.path)
    return dict(sorted(found.items()))


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise TopologyError(f"cannot list ({exc.strerror})", path=str(path)) from exc


def _meminfo_total_kib(text: str | None) -> int | None:
    if not text:
        return None
    for line in text.splitlines():
        if "MemTotal:" in line:
            fields = line.split("MemTotal:", 1)[1].split()
            if fields and fields[0].isdigit():
                return int(fields[0])
    return None


def read_topology(root: Path = DEFAULT_ROOT) -> Topology:
    """Read the topology under ``root`` (see ``SysfsReader``)."""
    return SysfsReader(root).read_topology()
