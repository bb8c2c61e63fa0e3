"""A real cgroup v1 cpuset subtree laid out like the kubelet's cgroupfs driver, for tests and
bench/ (needs root and the v1 cpuset hierarchy at /sys/fs/cgroup/cpuset)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CPUSET_V1 = Path("/sys/fs/cgroup/cpuset")


def unavailable() -> str:
    """Why the real-cgroup tests cannot run here ("" when they can)."""
    if os.geteuid() != 0:
        return "needs root to create cgroups under /sys/fs/cgroup/cpuset"
    if not (CPUSET_V1 / "cpuset.cpus").exists():
        return "needs the cgroup v1 cpuset hierarchy at /sys/fs/cgroup/cpuset"
    return ""


def make_cgroup(path: Path, cpus: str, mems: str = "0") -> Path:
    """Create a v1 cpuset cgroup and give it CPUs and memory nodes, as a runtime does."""
    path.mkdir()
    (path / "cpuset.mems").write_text(mems)
    (path / "cpuset.cpus").write_text(cpus)
    return path


def allowed_cpus(pid: int) -> str:
    """``Cpus_allowed_list`` of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for pid {pid}")


class Node:
    """``dracpu-test-<random>/kubepods`` with processes moved into container cgroups."""

    def __init__(self, top: Path, cpus: str) -> None:
        self.top = top
        self.cpus = cpus
        self.kubepods = make_cgroup(top / "kubepods", cpus)
        self.processes: list[subprocess.Popen[bytes]] = []

    def pod(self, uid: str, qos: str = "burstable") -> Path:
        qos_dir = self.kubepods / qos
        if not qos_dir.exists():
            make_cgroup(qos_dir, self.cpus)
        return make_cgroup(qos_dir / f"pod{uid}", self.cpus)

    def container(self, pod: Path, cid: str, env: dict[str, str]) -> tuple[Path, int]:
        """A container cgroup with a ``sleep`` whose env is ``env``, moved in as runc does."""
        proc = subprocess.Popen(["sleep", "300"], env={"PATH": os.environ["PATH"], **env})
        self.processes.append(proc)
        cgroup = make_cgroup(pod / cid, self.cpus)
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
        return cgroup, proc.pid

    def stop(self, pid: int) -> None:
        for proc in self.processes:
            if proc.pid == pid:
                proc.send_signal(signal.SIGKILL)
                proc.wait()


@contextmanager
def cgroup_node(cpus: str = "0-1") -> Iterator[Node]:
    """A fresh subtree, removed with its processes afterwards."""
    top = make_cgroup(CPUSET_V1 / f"dracpu-test-{secrets.token_hex(4)}", cpus)
    node = Node(top, cpus)
    try:
        yield node
    finally:
        for proc in node.processes:
            proc.kill()
            proc.wait()
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
            path.rmdir()
        top.rmdir()
