"""The NRI plugin against the rig's real containerd (NRI v0.12 inside containerd 2.3).

A container created through CRI (grpcio, like the kubelet) with a CDI device that injects
``DRA_CPUSET_<claim>`` (what dracpu's prepare writes) gets the plugin's cpuset adjustment,
and a later Runtime/UpdateContainers from the plugin moves a running container's cpuset. The
CRI calls are blocking grpcio calls, so they run in a worker thread while the plugin answers
NRI requests in the trio loop.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from dracpu.nri import Backoff, NriPlugin
from tests.e2e.node_agent import NodeAgent, RunningPod, wait_for
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


def _pod() -> dict[str, object]:
    name = f"nri-{uuid.uuid4().hex[:8]}"
    return {
        "metadata": {"name": name, "namespace": "nri-e2e", "uid": str(uuid.uuid4())},
        "spec": {"containers": [{"name": "c", "command": ["sleep", "3600"]}]},
    }


@pytest.fixture
def cdi_device(rig: Rig) -> Iterator[tuple[str, str]]:
    """A CDI device injecting ``DRA_CPUSET_<claim>=<last allowed CPU>``, as the driver's would.

    Yields (CDI device id, cpus). containerd applies CDI edits before NRI's CreateContainer, so
    the plugin finds the variable in ``container.env``.
    """
    tag = uuid.uuid4().hex[:8]
    cpus = str(sorted(os.sched_getaffinity(0))[-1])
    kind = f"nri{tag}.dracpu.dev/cpu"
    spec_file = rig.cdi_dir / f"nri-{tag}.json"
    spec = {
        "cdiVersion": "0.6.0",
        "kind": kind,
        "devices": [{"name": "claim", "containerEdits": {"env": [f"DRA_CPUSET_{tag}={cpus}"]}}],
    }
    spec_file.write_text(json.dumps(spec))
    try:
        yield f"{kind}=claim", cpus
    finally:
        spec_file.unlink()


async def test_cri_container_gets_the_nri_cpuset(
    node_agent: NodeAgent,
    plugin: tuple[NriPlugin, RecordingHandler],
    cdi_device: tuple[str, str],
) -> None:
    nri, handler = plugin
    device, last = cdi_device
    first = str(min(os.sched_getaffinity(0)))
    assert nri.runtime is not None
    assert nri.runtime.name == "containerd"
    running: RunningPod | None = None
    try:
        with trio.fail_after(120):
            running = await trio.to_thread.run_sync(
                functools.partial(
                    node_agent.start_cri_pod, _pod(), cdi_by_container={"c": [device]}
                )
            )
            report = (await trio.to_thread.run_sync(node_agent.report, running))["c"]
            cid = running.containers["c"]
            assert ("create", cid) in handler.calls
            assert ("START_CONTAINER", cid) in handler.calls
            # No cpuset came from CRI: the pin is the NRI adjustment alone.
            assert report.cpus_allowed_list == last
            assert report.cgroup_cpuset == last

            await nri.update_containers([cpu_update(cid, first)])
            await trio.to_thread.run_sync(
                functools.partial(
                    wait_for,
                    "cpuset update through NRI",
                    lambda: (
                        Path(f"/proc/{report.pid}/status")
                        .read_text()
                        .count(f"Cpus_allowed_list:\t{first}\n")
                    ),
                    timeout=10,
                )
            )
    finally:
        if running is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(node_agent.stop_pod, running)
    assert ("stop", cid) in handler.calls
    assert ("REMOVE_CONTAINER", cid) in handler.calls
