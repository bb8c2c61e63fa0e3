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
    """``dracpu-test-<random>/kubepods`` (cgroupfs driver) or ``…/kubepods.slice`` (systemd
    driver) with processes moved into container cgroups named as the kubelet and containerd
    name them."""

    def __init__(self, top: Path, cpus: str, systemd: bool = False) -> None:
        self.top = top
        self.cpus = cpus
        self.systemd = systemd
        self.kubepods = make_cgroup(top / ("kubepods.slice" if systemd else "kubepods"), cpus)
        self.processes: list[subprocess.Popen[bytes]] = []

    def pod(self, uid: str, qos: str = "burstable") -> Path:
        if self.systemd:
            qos_dir = self.kubepods / f"kubepods-{qos}.slice"
            pod_name = f"kubepods-{qos}-pod{uid.replace('-', '_')}.slice"
        else:
            qos_dir, pod_name = self.kubepods / qos, f"pod{uid}"
        if not qos_dir.exists():
            make_cgroup(qos_dir, self.cpus)
        return make_cgroup(qos_dir / pod_name, self.cpus)

    def container(
        self, pod: Path, cid: str, env: dict[str, str], argv: tuple[str, ...] = ("sleep", "300")
    ) -> tuple[Path, int]:
        """A container cgroup with a process (``argv``, env ``env``), moved in as runc does."""
        proc = subprocess.Popen(list(argv), env={"PATH": os.environ["PATH"], **env})
        self.processes.append(proc)
        name = f"cri-containerd-{cid}.scope" if self.systemd else cid
        cgroup = make_cgroup(pod / name, self.cpus)
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
        return cgroup, proc.pid

    def stop(self, pid: int) -> None:
        for proc in self.processes:
            if proc.pid == pid:
                proc.send_signal(signal.SIGKILL)
                proc.wait()


@contextmanager
def cgroup_node(cpus: str = "0-1", *, systemd: bool = False) -> Iterator[Node]:
    """A fresh subtree, removed with its processes afterwards."""
    top = make_cgroup(CPUSET_V1 / f"dracpu-test-{secrets.token_hex(4)}", cpus)
    node = Node(top, cpus, systemd)
    try:
        yield node
    finally:
        for proc in node.processes:
            proc.kill()
            proc.wait()
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
            path.rmdir()
        top.rmdir()
