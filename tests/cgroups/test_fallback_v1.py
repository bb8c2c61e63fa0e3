"""The cgroup fallback on a real cgroup v1 cpuset hierarchy, with real processes.

Each test builds ``/sys/fs/cgroup/cpuset/dracpu-test-<random>/kubepods`` in the kubelet's
cgroupfs layout, runs the enforcer over it and reads the outcome back from the kernel
(``/proc/<pid>/status``). cgroup v2 cannot be tested on this machine: its unified hierarchy
(``/sys/fs/cgroup/unified``) has no cpuset controller.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from dracpu.cgroups import CgroupEnforcer, CgroupTree, Driver, Pinned
from dracpu.core import node
from dracpu.core.claims import ClaimRef
from dracpu.core.cpuset import CpuSet
from dracpu.core.node import NodeConfig, NodeState
from dracpu.core.slices import GroupBy
from dracpu.nri.policy import StepDecider
from tests.cgroups.support import allowed_cpus, cgroup_node, unavailable
from tests.support.claims import POOL, cpuset_config, grouped, parsed, prepare
from tests.support.topologies import make_topology

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "available")

POD_A = "0b7d7a5e-3c2f-4b8e-9f0a-1d2c3b4a5f6e"
POD_B = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def two_cpus(*claims: tuple[str, str]) -> NodeState:
    """This machine's shape: CPUs 0-1, nothing reserved; ``claims`` prepared (uid, cpuset)."""
    topology = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=2, threads=1)
    state = NodeState.initial(topology, NodeConfig(pool=POOL, group_by=GroupBy.MACHINE))
    for uid, cpus in claims:
        state, _, results = prepare(
            state,
            parsed(uid, [grouped("cpudevmachine", len(CpuSet.parse(cpus)))], [cpuset_config(cpus)]),
        )
        assert isinstance(results[uid], node.ClaimPrepared), results
    return state


async def until(check: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    """Poll the kernel's view until ``check`` holds (there is no event to wait on)."""
    for _ in range(int(seconds / 0.005)):
        if check():
            return
        await trio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("driver", list(Driver))
async def test_pins_exclusive_and_shared_and_undoes_rewrites(driver: Driver) -> None:
    decider = StepDecider(two_cpus(("c1", "1")))
    pinned: list[Pinned] = []
    with cgroup_node(systemd=driver is Driver.SYSTEMD) as cg, trio.fail_after(20):
        tree = CgroupTree(cg.kubepods, driver, 1)
        enforcer = CgroupEnforcer(tree, decider, on_pinned=pinned.append, settle=1.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(enforcer.run)
            pod_a = cg.pod(POD_A)
            excl, excl_pid = cg.container(pod_a, "ctrexcl", {"DRA_CPUSET_c1": "1"})
            pod_b = cg.pod(POD_B, qos="besteffort")
            shared, shared_pid = cg.container(pod_b, "ctrshared", {"HOME": "/"})
            await until(lambda: allowed_cpus(excl_pid) == "1", "the exclusive pin")
            await until(lambda: allowed_cpus(shared_pid) == "0", "the shared pool")
            assert (excl / "cpuset.cpus").read_text().strip() == "1"
            assert decider.state.containers["ctrexcl"].claims == ("c1",)
            assert decider.state.owners["c1"].pod_uid == POD_A
            # The runtime (or kubelet) rewrites the cpuset: undone.
            (excl / "cpuset.cpus").write_text("0-1")
            await trio.sleep(0.05)
            await until(lambda: allowed_cpus(excl_pid) == "1", "the pin restored")
            # The pod goes, the claim is unprepared: the shared container widens.
            cg.stop(excl_pid)
            excl.rmdir()
            await until(lambda: "ctrexcl" not in decider.state.containers, "the removal")
            decider.on_updates = enforcer.submit
            decider.apply_now(node.Unprepare((ClaimRef("", "", "c1"),)))
            assert allowed_cpus(shared_pid) == "0-1"
            assert shared.exists()
            nursery.cancel_scope.cancel()
    assert any(p.container_id == "ctrexcl" and p.cpus == CpuSet.of([1]) for p in pinned)


async def test_forged_env_runs_on_the_shared_pool() -> None:
    decider = StepDecider(two_cpus(("c1", "1")))
    with cgroup_node() as cg, trio.fail_after(20):
        tree = CgroupTree(cg.kubepods, Driver.CGROUPFS, 1)
        async with trio.open_nursery() as nursery:
            await nursery.start(CgroupEnforcer(tree, decider, settle=1.0).run)
            pod = cg.pod(POD_A)
            _, pid = cg.container(pod, "ctr-forged", {"DRA_CPUSET_c1": "0-1"})
            await until(lambda: allowed_cpus(pid) == "0", "the forged container on the pool")
            assert decider.state.containers["ctr-forged"].claims == ()
            nursery.cancel_scope.cancel()


async def test_env_after_exec_is_seen() -> None:
    """As with runc: the process in the new cgroup first has the runtime's env, then execs the
    container's command with the container's env (``DRA_CPUSET_*`` included)."""
    decider = StepDecider(two_cpus(("c1", "1")))
    with cgroup_node() as cg, trio.fail_after(20):
        tree = CgroupTree(cg.kubepods, Driver.CGROUPFS, 1)
        async with trio.open_nursery() as nursery:
            await nursery.start(CgroupEnforcer(tree, decider, settle=3.0).run)
            argv = ("sh", "-c", "sleep 0.3; exec env DRA_CPUSET_c1=1 sleep 300")
            _, pid = cg.container(cg.pod(POD_A), "ctrlate", {"RUNTIME": "1"}, argv)
            await until(lambda: allowed_cpus(pid) == "0", "the shared pool before exec")
            await until(lambda: allowed_cpus(pid) == "1", "the pin after exec")
            assert decider.state.containers["ctrlate"].claims == ("c1",)
            nursery.cancel_scope.cancel()


async def test_start_adopts_and_reconciles_running_containers() -> None:
    """Containers running before the fallback starts (a node that ran the upstream driver)."""
    decider = StepDecider(two_cpus())
    uid = "7f3c1c9e-2b0a-4c5e-9a51-0c2f1d3e4b5a"
    with cgroup_node() as cg, trio.fail_after(20):
        pod = cg.pod(POD_A, qos="burstable")
        excl, excl_pid = cg.container(pod, "ctr-up", {f"DRA_CPUSET_{uid}": "1"})
        (excl / "cpuset.cpus").write_text("1")  # the upstream driver's pin
        _, shared_pid = cg.container(pod, "ctr-shared", {})
        tree = CgroupTree(cg.kubepods, Driver.CGROUPFS, 1)
        async with trio.open_nursery() as nursery:
            await nursery.start(CgroupEnforcer(tree, decider, settle=0.5).run)
            assert decider.state.claims[uid].adopted
            assert allowed_cpus(excl_pid) == "1"
            assert allowed_cpus(shared_pid) == "0"
            nursery.cancel_scope.cancel()
