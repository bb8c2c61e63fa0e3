"""The daemon's enforcement hands over between the cgroup fallback and NRI, both ways, without
moving a pinned container: a real cgroup v1 subtree, real processes and the Go NRI peer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from dracpu.cdi import CdiDir
from dracpu.cgroups import Driver
from dracpu.checkpoint import CheckpointStore
from dracpu.daemon.config import EnforcementMode
from dracpu.daemon.enforcement import Enforcement
from dracpu.daemon.owner import Owner
from tests.cgroups.support import allowed_cpus, cgroup_node, unavailable
from tests.cgroups.test_fallback_v1 import POD_A, POD_B, two_cpus, until
from tests.nri.peer import open_peer

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "available")


async def test_fallback_then_nri_then_fallback(
    tmp_path: Path, socket_path: str, nri_peer_binary: Path
) -> None:
    owner = Owner(
        two_cpus(("c1", "1")),
        checkpoint=CheckpointStore(tmp_path / "state", durable=False),
        cdi=CdiDir(tmp_path / "cdi"),
    )
    with cgroup_node() as cg, trio.fail_after(30):
        mount = tmp_path / "mount"
        mount.mkdir()
        os.symlink(cg.top, mount / "cpuset")  # <mount>/cpuset/kubepods, as on a v1 host
        enforcement = Enforcement(
            owner,
            mode=EnforcementMode.AUTO,
            nri_socket=Path(socket_path),
            cgroup_mount=mount,
            cgroup_driver=Driver.CGROUPFS,
            handover_grace=0.2,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(owner.run)
            nursery.start_soon(enforcement.run)
            await until(lambda: enforcement.active == "cgroups", "the fallback to start")
            pod = cg.pod(POD_A)
            _, excl_pid = cg.container(pod, "ctr-excl", {"DRA_CPUSET_c1": "1"})
            await until(lambda: allowed_cpus(excl_pid) == "1", "the fallback's pin")

            async with trio.open_nursery() as runtime:
                peer = await open_peer(runtime, nri_peer_binary)
                await peer.command("add-pod", pod="p1")
                start = len(peer.events)
                await peer.command("start", socket=socket_path)
                # The runtime side counts the plugin only once it has synchronized.
                await peer.wait_log("connected and synchronized", start=start)
                await until(
                    lambda: enforcement.active == "nri" and enforcement.fallback is None,
                    "NRI to take over and the fallback to stop",
                )
                rsp = await peer.command("create", pod="p1", id="s1", env=["PATH=/bin"])
                assert rsp["adjust"]["linux"]["resources"]["cpu"]["cpus"] == "0"
                peer.kill()
                runtime.cancel_scope.cancel()

            await until(lambda: enforcement.active == "cgroups", "the fallback to return")
            _, shared_pid = cg.container(cg.pod(POD_B), "ctr-shared", {})
            await until(lambda: allowed_cpus(shared_pid) == "0", "the shared pool")
            # The pin never moved; the returning fallback re-read it from the tree.
            assert allowed_cpus(excl_pid) == "1"
            assert owner.state.containers["ctr-excl"].claims == ("c1",)
            nursery.cancel_scope.cancel()
