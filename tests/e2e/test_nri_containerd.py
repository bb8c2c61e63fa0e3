"""The NRI plugin against the rig's real containerd (NRI v0.12 inside containerd 2.3), with the
pod run by the real kubelet.

A pod with a claim is prepared by the test DRA driver, whose CDI device injects
``DRA_CPUSET_<claim>=<allocated CPUs>`` (what dracpu's prepare writes). The kubelet asks
containerd for the container with that CDI device; the NRI plugin sees the variable at
CreateContainer and pins the container to those CPUs (the kubelet, with ``cpuManagerPolicy:
none``, sets no cpuset of its own). A later Runtime/UpdateContainers from the plugin moves the
running container's cpuset. Blocking API calls run in a worker thread while the plugin answers
NRI requests in the trio loop.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from dracpu.nri import Backoff, NriPlugin
from tests.e2e.dra_driver import DraDriver
from tests.e2e.kube import (
    Created,
    cgroup_cpuset,
    claim,
    claim_pod,
    container_id,
    container_process,
    node_slices,
    wait_for,
    wait_running,
)
from tests.e2e.rig import Rig
from tests.nri.recording_handler import RecordingHandler, cpu_update

pytestmark = pytest.mark.e2e


@pytest.fixture
async def plugin(rig: Rig) -> AsyncIterator[tuple[NriPlugin, RecordingHandler]]:
    """A registered, synchronized plugin on containerd's NRI socket."""
    handler = RecordingHandler(touch_others=False)  # leave other containers alone
    nri = NriPlugin(
        handler,
        name="dracpu-e2e",
        index="42",
        socket_path=str(rig.nri_socket),
        backoff=Backoff(initial=0.1, maximum=1.0),
    )
    handler.plugin = nri
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            await nursery.start(nri.run)
        yield nri, handler
        nursery.cancel_scope.cancel()


async def test_kubelet_container_gets_the_nri_cpuset(
    rig: Rig,
    kube: httpx.Client,
    dra_driver: DraDriver,
    created: Created,
    device_class: str,
    plugin: tuple[NriPlugin, RecordingHandler],
) -> None:
    nri, handler = plugin
    assert nri.runtime is not None
    assert nri.runtime.name == "containerd"
    run = trio.to_thread.run_sync
    await run(wait_for, "published slice", lambda: node_slices(kube, rig), 20)
    tag = uuid.uuid4().hex[:8]
    uid = (await run(claim, created, device_class, f"e2e-{tag}"))["metadata"]["uid"]
    name = f"e2e-nri-{tag}"
    await run(created.pod, claim_pod(rig, name, f"e2e-{tag}"))
    pod = await run(wait_running, kube, "default", name)
    cid = container_id(pod, "main")
    (prepared,) = [c for c in dra_driver.calls("prepare") if c["uid"] == uid]
    mine = prepared["cpus"]
    assert ("create", cid) in handler.calls
    assert ("START_CONTAINER", cid) in handler.calls
    # No cpuset came from the kubelet: the pin is the NRI adjustment alone.
    proc = container_process(rig, pod, "main")
    assert proc.cpus_allowed_list == mine
    assert cgroup_cpuset(rig, pod, "main") == mine

    other = str(min(set(os.sched_getaffinity(0)) - {int(mine)}, default=int(mine)))
    await nri.update_containers([cpu_update(cid, other)])
    await run(
        functools.partial(
            wait_for,
            "cpuset update through NRI",
            lambda: (
                Path(f"/proc/{proc.pid}/status").read_text().count(f"Cpus_allowed_list:\t{other}\n")
            ),
            timeout=10,
        )
    )
    await run(created.delete_pod, name)
    assert ("stop", cid) in handler.calls
    await run(
        functools.partial(
            wait_for,
            "NRI RemoveContainer",
            lambda: ("REMOVE_CONTAINER", cid) in handler.calls,
            timeout=60,
        )
    )
