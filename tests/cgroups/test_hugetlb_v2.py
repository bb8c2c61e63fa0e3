"""Memory enforcement by the cgroup fallback on this machine's real cgroups: ``cpuset.mems`` in
the v1 cpuset hierarchy and ``hugetlb.<size>.max`` in the v2 hierarchy that has the hugetlb
controller (``/sys/fs/cgroup/unified`` here; cpuset is v1). Each test creates its own subtree
``dracpu-test-<random>`` in both and removes it, and enables hugetlb in the v2 root's
``cgroup.subtree_control`` only for its duration when it was not enabled."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from dracpu.cgroups import CgroupEnforcer, CgroupTree, Driver, HugetlbTree, detect_hugetlb
from dracpu.core import node
from dracpu.core.claims import ClaimRef
from dracpu.core.memory import GIB, MIB, HugePagePool, MemoryNode, MemoryTopology
from dracpu.core.memory_prepare import AllocatedMemory, memory_env
from dracpu.core.memory_slices import MemorySliceOptions, memory_devices
from dracpu.core.node import NodeConfig, NodeState
from dracpu.core.slices import GroupBy
from dracpu.nri.policy import StepDecider
from tests.cgroups.support import cgroup_node, unavailable
from tests.cgroups.test_fallback_v1 import until
from tests.support.claims import POOL
from tests.support.topologies import make_topology

CGROUP = Path("/sys/fs/cgroup")
UNIFIED = CGROUP / "unified"
UID = "0f3c1b2a-7d4e-4c1b-9a53-1e2d3c4b5a69"
POD = "0b7d7a5e-3c2f-4b8e-9f0a-1d2c3b4a5f6e"


def v2_unavailable() -> str:
    if os.geteuid() != 0:
        return "needs root to create cgroups under /sys/fs/cgroup/unified"
    try:
        offered = (UNIFIED / "cgroup.controllers").read_text().split()
    except OSError:
        return "needs a cgroup v2 hierarchy at /sys/fs/cgroup/unified"
    return "" if "hugetlb" in offered else "needs the hugetlb controller in /sys/fs/cgroup/unified"


pytestmark = pytest.mark.skipif(bool(v2_unavailable()), reason=v2_unavailable() or "available")


@contextmanager
def hugetlb_subtree(top: str, *parts: str) -> Iterator[Path]:
    """``UNIFIED/top/parts...`` with hugetlb enabled down to the last one; removed afterwards."""
    control = UNIFIED / "cgroup.subtree_control"
    enabled_here = "hugetlb" not in control.read_text().split()
    if enabled_here:
        control.write_text("+hugetlb")
    made: list[Path] = []
    try:
        path = UNIFIED / top
        for part in ("", *parts):
            path = path / part if part else path
            path.mkdir()
            made.append(path)
            if part != parts[-1]:
                (path / "cgroup.subtree_control").write_text("+hugetlb")
        yield path
    finally:
        for path in reversed(made):
            path.rmdir()
        if enabled_here:
            control.write_text("-hugetlb")


def test_write_limit_and_detect() -> None:
    top = f"dracpu-test-{secrets.token_hex(4)}"
    with hugetlb_subtree(top, "kubepods", "ctr") as ctr:
        found = detect_hugetlb(CGROUP, Driver.CGROUPFS, f"/{top}")
        assert found == HugetlbTree(UNIFIED / top / "kubepods")
        found.write_limit(("ctr",), "2MB", 8 * MIB)
        assert (ctr / "hugetlb.2MB.max").read_text().strip() == str(8 * MIB)
        found.write_limit(("ctr",), "2MB", 0)
        assert (ctr / "hugetlb.2MB.max").read_text().strip() == "0"
    assert detect_hugetlb(CGROUP, Driver.CGROUPFS, f"/{top}") is None


def memory_state() -> tuple[NodeState, tuple[str, ...]]:
    """This machine's shape (CPUs 0-1, NUMA node 0) with a claim of 4 MiB of 2 MiB pages."""
    topology = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=2, threads=1)
    memory = MemoryTopology(
        nodes=(MemoryNode(0, 4 * GIB, hugepages=(HugePagePool(2 * MIB, 16),)),),
        page_size=4096,
        hugepage_sizes=(2 * MIB,),
    )
    devices = tuple(memory_devices(memory, MemorySliceOptions(POOL)))
    config = NodeConfig(pool=POOL, group_by=GroupBy.MACHINE, memory_devices=devices)
    state = NodeState.initial(topology, config)
    result = AllocatedMemory("hp", POOL, "hugepages-2mi-numa000", {"size": "4Mi"})
    state, _ = node.step(state, node.PrepareMemory((ClaimRef("ns", "m", UID),), {UID: (result,)}))
    return state, tuple(memory_env(state.memory[UID]))


@pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "available")
async def test_fallback_sets_mems_and_hugetlb_limit() -> None:
    state, env = memory_state()
    decider = StepDecider(state)
    with cgroup_node() as cg, trio.fail_after(30):
        top = cg.top.name
        # The v2 mirror of the container cgroup, as runc creates it on a hybrid host.
        with hugetlb_subtree(top, "kubepods", "burstable", f"pod{POD}", "ctrmem") as mirror:
            tree = CgroupTree(cg.kubepods, Driver.CGROUPFS, 1)
            hugetlb = detect_hugetlb(CGROUP, Driver.CGROUPFS, f"/{top}")
            assert hugetlb is not None
            enforcer = CgroupEnforcer(tree, decider, settle=1.0, hugetlb=hugetlb)
            async with trio.open_nursery() as nursery:
                await nursery.start(enforcer.run)
                pod = cg.pod(POD)
                ctr, _pid = cg.container(pod, "ctrmem", dict(e.split("=", 1) for e in env))
                limit = mirror / "hugetlb.2MB.max"
                await until(lambda: limit.read_text().strip() == str(4 * MIB), "the limit", 15.0)
                assert (ctr / "cpuset.mems").read_text().strip() == "0"
                assert decider.state.containers["ctrmem"].memory.mems == (0,)
                nursery.cancel_scope.cancel()
            cg.stop(_pid)
