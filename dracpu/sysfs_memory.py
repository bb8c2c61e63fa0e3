"""Read a node's memory and hugepages per NUMA node from a sysfs tree, read-only.

Sources, per ``devices/system/node/nodeN``:

- ``meminfo`` → ``MemTotal`` and ``MemFree`` (kB);
- ``hugepages/hugepages-<kB>kB/{nr,free,surplus}_hugepages`` → one pool per page size;
- ``cpulist`` → the node's CPUs (empty on memory-only CXL/HBM nodes);
- ``../has_memory`` → which nodes have memory at all (nodes without are skipped).

``kernel/mm/hugepages/hugepages-<kB>kB`` lists the sizes the kernel supports. Trees without
per-node memory (kernels without NUMA, or captures without ``meminfo``) fall back, for a single
node, to ``<proc>/meminfo`` (``MemTotal``, ``MemFree``) and the global hugepage counts; ``<proc>``
defaults to the ``proc`` directory beside the sysfs root (``/proc`` for ``/sys``).

Malformed numbers raise ``TopologyError`` naming the path; missing optional files degrade.
"""

from __future__ import annotations

import mmap
import re
from pathlib import Path

from dracpu.core.cpuset import CpuSet
from dracpu.core.memory import KIB, HugePagePool, MemoryNode, MemoryTopology
from dracpu.errors import CpuSetParseError, TopologyError
from dracpu.sysfs import DEFAULT_ROOT, _numbered_dirs, _scandir

__all__ = ["MemoryReader", "read_memory"]

_NODE_DIR = re.compile(r"node(\d+)")
_HUGEPAGES_DIR = re.compile(r"hugepages-(\d+)kB")


class MemoryReader:
    """Reads memory facts under one sysfs root (the directory that holds ``devices/``).

    ``page_size`` is the base page size to report (this machine's by default: it is not in
    sysfs); ``proc_root`` is where the single-node fallback finds ``meminfo``.
    """

    def __init__(
        self,
        root: Path = DEFAULT_ROOT,
        *,
        proc_root: Path | None = None,
        page_size: int = mmap.PAGESIZE,
    ) -> None:
        self.root = root
        self.proc_root = proc_root if proc_root is not None else root.parent / "proc"
        self.page_size = page_size
        self._node_dir = root / "devices" / "system" / "node"

    def read_memory(self) -> MemoryTopology:
        """Every NUMA node with memory, in id order; raises ``TopologyError`` naming a bad file."""
        sizes = tuple(sorted(self._pools(self.root / "kernel" / "mm" / "hugepages")))
        node_dirs = _numbered_dirs(self._node_dir, _NODE_DIR)
        with_memory = self._cpulist(self._node_dir / "has_memory")
        nodes: list[MemoryNode] = []
        for node_id, path in node_dirs.items():
            if with_memory is not None and node_id not in with_memory:
                continue
            meminfo = self._meminfo(path / "meminfo", prefix=f"Node {node_id} ")
            pools = self._pools(path / "hugepages")
            if not meminfo and len(node_dirs) == 1:
                # One node and no per-node meminfo: the whole machine's numbers are the node's.
                meminfo = self._meminfo(self.proc_root / "meminfo", prefix="")
                pools = pools or self._pools(self.root / "kernel" / "mm" / "hugepages")
            total = meminfo.get("MemTotal")
            if total is None or total == 0:
                continue
            free = meminfo.get("MemFree")
            nodes.append(
                MemoryNode(
                    id=node_id,
                    total_bytes=total * KIB,
                    free_bytes=None if free is None else free * KIB,
                    hugepages=tuple(pools[size] for size in sorted(pools)),
                    cpus=self._cpulist(path / "cpulist") or CpuSet(),
                )
            )
        if not node_dirs:
            meminfo = self._meminfo(self.proc_root / "meminfo", prefix="")
            total = meminfo.get("MemTotal")
            if total:
                pools = self._pools(self.root / "kernel" / "mm" / "hugepages")
                free = meminfo.get("MemFree")
                nodes.append(
                    MemoryNode(
                        id=0,
                        total_bytes=total * KIB,
                        free_bytes=None if free is None else free * KIB,
                        hugepages=tuple(pools[size] for size in sorted(pools)),
                    )
                )
        return MemoryTopology(nodes=tuple(nodes), page_size=self.page_size, hugepage_sizes=sizes)

    def _pools(self, parent: Path) -> dict[int, HugePagePool]:
        pools: dict[int, HugePagePool] = {}
        for entry in _scandir(parent):
            m = _HUGEPAGES_DIR.fullmatch(entry.name)
            if not m:
                continue
            d = Path(entry.path)
            size = int(m.group(1)) * KIB
            pools[size] = HugePagePool(
                page_size=size,
                total=self._int(d / "nr_hugepages"),
                free=self._int(d / "free_hugepages"),
                surplus=self._int(d / "surplus_hugepages"),
            )
        return pools

    def _meminfo(self, path: Path, *, prefix: str) -> dict[str, int]:
        """``Key: value [kB]`` lines, values in kB (counts for ``HugePages_*``)."""
        text = _text(path)
        if text is None:
            return {}
        found: dict[str, int] = {}
        for line in text.splitlines():
            key, sep, rest = line.removeprefix(prefix).partition(":")
            if not sep:
                continue
            fields = rest.split()
            if not fields:
                continue
            try:
                found[key.strip()] = int(fields[0])
            except ValueError as exc:
                raise TopologyError(f"not an integer in {line.strip()!r}", path=str(path)) from exc
        return found

    def _int(self, path: Path) -> int:
        text = _text(path)
        if text is None or text == "":
            return 0
        try:
            value = int(text)
        except ValueError as exc:
            raise TopologyError(f"not an integer: {text!r}", path=str(path)) from exc
        if value < 0:
            raise TopologyError(f"negative count: {text!r}", path=str(path))
        return value

    def _cpulist(self, path: Path) -> CpuSet | None:
        text = _text(path)
        if text is None:
            return None
        try:
            return CpuSet.parse(text)
        except CpuSetParseError as exc:
            raise TopologyError(str(exc), path=str(path)) from exc


def _text(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("ascii", "replace").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise TopologyError(f"cannot read ({exc.strerror})", path=str(path)) from exc


def read_memory(root: Path = DEFAULT_ROOT, *, page_size: int = mmap.PAGESIZE) -> MemoryTopology:
    """Read the memory topology under ``root`` (see ``MemoryReader``)."""
    return MemoryReader(root, page_size=page_size).read_memory()
