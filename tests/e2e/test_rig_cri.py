"""containerd on the rig runs CRI containers with CDI devices and cpusets (via grpcio CRI)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest

from tests.e2e.node_agent import NodeAgent, RunningPod, wait_for
from tests.e2e.rig import Rig

pytestmark = pytest.mark.e2e


def _pod(name: str, command: list[str]) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": "rig-smoke", "uid": str(uuid.uuid4())},
        "spec": {"containers": [{"name": "c", "command": command}]},
    }


@pytest.fixture
def pods(node_agent: NodeAgent) -> Iterator[list[RunningPod]]:
    started: list[RunningPod] = []
    try:
        yield started
    finally:
        for p in started:
            node_agent.stop_pod(p)


def _start(
    node_agent: NodeAgent, pods: list[RunningPod], pod: dict[str, object], **kw: object
) -> RunningPod:
    running = node_agent.start_cri_pod(pod, **kw)  # type: ignore[arg-type]
    pods.append(running)
    return running


def test_cdi_device_sets_env(rig: Rig, node_agent: NodeAgent, pods: list[RunningPod]) -> None:
    tag = uuid.uuid4().hex[:8]
    spec_file = rig.cdi_dir / f"smoke-{tag}.json"
    spec = {
        "cdiVersion": "0.6.0",
        "kind": f"smoke{tag}.dracpu.dev/cpu",
        "devices": [{"name": "dev0", "containerEdits": {"env": [f"DRACPU_SMOKE={tag}"]}}],
    }
    spec_file.write_text(json.dumps(spec))
    try:
        running = _start(
            node_agent,
            pods,
            _pod(f"cdi-{tag}", ["sleep", "3600"]),
            cdi_by_container={"c": [f"smoke{tag}.dracpu.dev/cpu=dev0"]},
        )
        report = node_agent.report(running)["c"]
        assert report.environ.get("DRACPU_SMOKE") == tag
    finally:
        spec_file.unlink()


def test_unknown_cdi_device_fails_create(node_agent: NodeAgent, pods: list[RunningPod]) -> None:
    pod = _pod(f"nocdi-{uuid.uuid4().hex[:8]}", ["sleep", "3600"])
    meta: dict[str, str] = pod["metadata"]  # type: ignore[assignment]
    running = RunningPod(meta["namespace"], meta["name"], meta["uid"], "")
    pods.append(running)  # the sandbox is created before the container fails
    with pytest.raises(grpc.RpcError) as err:
        node_agent.start_cri_pod(
            pod,
            cdi_by_container={"c": ["missing.dracpu.dev/cpu=nope"]},
            running=running,
        )
    assert "missing.dracpu.dev/cpu=nope" in str(err.value.details())


def test_cpuset_shows_in_cpus_allowed_list(
    rig: Rig, node_agent: NodeAgent, pods: list[RunningPod]
) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    want = str(cpus[-1])  # one CPU, the last one we may use
    running = _start(
        node_agent,
        pods,
        _pod(f"cpuset-{uuid.uuid4().hex[:8]}", ["sleep", "3600"]),
        cdi_by_container={},
        cpusets={"c": want},
    )
    report = node_agent.report(running)["c"]
    assert report.cpus_allowed_list == want
    assert report.cgroup_cpuset == want
    # The container's own view agrees: its PID 1 is the sleep we started.
    status = Path(f"/proc/{report.pid}/status").read_text()
    assert f"Cpus_allowed_list:\t{want}" in status
    assert wait_for("container to still run", lambda: Path(f"/proc/{report.pid}").exists())
