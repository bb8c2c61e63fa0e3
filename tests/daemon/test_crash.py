"""Crash tests: ``dracpu run`` as a subprocess against the fake API server over HTTP, killed at
each effect boundary (``DRACPU_TEST_CRASH_AT``) and by SIGKILL, then restarted: the same
assignment, no orphan CDI file, no CPU given twice. And the graceful SIGTERM stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from dracpu.cdi import CdiDir
from dracpu.checkpoint import CheckpointStore
from dracpu.core.cpuset import CpuSet
from dracpu.daemon.owner import CRASH_EXIT_STATUS, CRASH_POINTS
from dracpu.daemon.status import read_status
from tests.daemon.support import (
    NODE,
    GrpcioApi,
    claim,
    dra_api,
    grouped,
    kubelet_call,
    short_dir,
    write_machine,
)
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_http import serve_fake_http, write_kubeconfig
from tests.kube.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Node:
    root: Path
    fake: FakeApiServer
    api: GrpcioApi
    procs: list[trio.Process] = field(default_factory=list)

    @property
    def dra_socket(self) -> Path:
        return self.root / "kubelet" / "plugins" / "dra.cpu" / "dra.sock"

    @property
    def registration_socket(self) -> Path:
        return self.root / "kubelet" / "plugins_registry" / "dra.cpu-reg.sock"

    def argv(self) -> list[str]:
        r = self.root
        return [
            sys.executable,
            "-m",
            "dracpu",
            "run",
            "--bind-address=127.0.0.1:0",
            f"--kubeconfig={r / 'kubeconfig'}",
            f"--sysfs-root={r / 'sys'}",
            f"--kubelet-root-dir={r / 'kubelet'}",
            f"--cdi-dir={r / 'cdi'}",
            f"--state-dir={r / 'state'}",
            f"--hostname-override={NODE}",
            "--release-grace-period=0",
        ]

    async def start(self, crash_at: str | None = None) -> trio.Process:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRACPU_")}
        env["PYTHONPATH"] = str(REPO)
        if crash_at:
            env["DRACPU_TEST_CRASH_AT"] = crash_at
        # A killed daemon leaves its socket files; the registration socket appears only once
        # the DRA socket is listening (a socket file exists between bind and listen).
        for path in (self.dra_socket, self.registration_socket):
            path.unlink(missing_ok=True)
        proc = await spawn(self.argv(), env, self.root / "log")
        self.procs.append(proc)
        await wait_for(lambda: self.registration_socket.exists() or proc.poll() is not None, 30)
        assert proc.poll() is None, (self.root / "log").read_text()[-2000:]
        return proc

    async def prepare(self, *uids: str, expect_crash: bool = False) -> Any:
        try:
            return await kubelet_call(
                self.dra_socket, self.api, "prepare", [("ns", f"claim-{u}", u) for u in uids]
            )
        except grpc.RpcError:
            if not expect_crash:
                log = (self.root / "log").read_text()[-3000:]
                raise AssertionError(f"prepare failed; daemon log:\n{log}") from None
            raise

    def checkpoint(self) -> dict[str, CpuSet]:
        body = CheckpointStore(self.root / "state").load().body
        assert body is not None
        return {c["uid"]: CpuSet.parse(c["cpus"]) for c in body["claims"]}

    def cdi(self) -> dict[str, CpuSet | None]:
        return CdiDir(self.root / "cdi").read_all()


async def spawn(argv: list[str], env: dict[str, str], log: Path) -> trio.Process:
    """Start the daemon with stderr appended to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return await trio.lowlevel.open_process(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=fd, cwd=REPO
        )
    finally:
        os.close(fd)


@pytest.fixture
async def node(nursery: trio.Nursery) -> AsyncIterator[Node]:
    with short_dir("dc-") as root:
        write_machine(root)
        fake = FakeApiServer()
        fake.put_object("nodes", {"metadata": {"name": NODE}})
        port = await nursery.start(serve_fake_http, fake)
        write_kubeconfig(root / "kubeconfig", port)
        for uid, device in (
            ("u1", "cpudevnuma000"),
            ("u2", "cpudevnuma000"),
            ("u3", "cpudevnuma001"),
        ):
            fake.put_object("resourceclaims", claim(uid, [grouped("req", device, 3)]))
        running = Node(root, fake, dra_api("v1"))
        try:
            yield running
        finally:
            for proc in running.procs:  # A failed test must not leave a daemon behind.
                if proc.poll() is None:
                    proc.kill()
                    await proc.wait()


async def stop(proc: trio.Process, sig: int = signal.SIGKILL) -> int:
    if sig and proc.poll() is None:
        proc.send_signal(sig)
    with trio.fail_after(40):
        return await proc.wait()


def assert_consistent(node: Node) -> dict[str, CpuSet]:
    """The CDI dir holds exactly the checkpoint's claims, and no CPU is in two claims."""
    held = node.checkpoint()
    assert node.cdi() == held
    seen = CpuSet()
    for cpus in held.values():
        assert cpus.isdisjoint(seen)
        seen = seen | cpus
    return held


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_crash_at_each_effect_boundary(node: Node, point: str) -> None:
    proc = await node.start()
    first = await node.prepare("u1")
    assert first.claims["u1"].error == ""
    u1 = node.checkpoint()["u1"]
    await stop(proc)

    proc = await node.start(crash_at=point)
    with pytest.raises(grpc.RpcError) as info:
        await node.prepare("u2", expect_crash=True)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await stop(proc) == CRASH_EXIT_STATUS
    # The crash happened after the checkpoint write: u2 is recorded.
    assert set(node.checkpoint()) == {"u1", "u2"}
    u2 = node.checkpoint()["u2"]

    proc = await node.start()
    held = assert_consistent(node)  # Start-up regenerated u2's spec if the crash preceded it.
    assert held == {"u1": u1, "u2": u2}
    retry = await node.prepare("u2", "u3")
    assert retry.claims["u2"].error == ""
    assert retry.claims["u3"].error == ""
    held = assert_consistent(node)
    assert held["u2"] == u2
    assert held["u1"] == u1
    assert len(held["u3"]) == 3
    assert await stop(proc, signal.SIGTERM) == 0


async def test_sigkill_mid_run_then_restart(node: Node) -> None:
    proc = await node.start()
    response = await node.prepare("u1", "u3")
    assert all(response.claims[u].error == "" for u in ("u1", "u3"))
    before = assert_consistent(node)
    await stop(proc)
    proc = await node.start()
    assert assert_consistent(node) == before
    status = await trio.to_thread.run_sync(read_status, node.root / "state")
    assert status["daemon"] == "up"
    assert {c["uid"]: c["cpus"] for c in status["claims"]} == {k: str(v) for k, v in before.items()}
    await stop(proc)


async def test_sigterm_is_graceful(node: Node) -> None:
    proc = await node.start()
    assert (await node.prepare("u1")).claims["u1"].error == ""
    await wait_for(lambda: bool(node.fake.objects.get("resourceslices")), 10)
    assert await stop(proc, signal.SIGTERM) == 0
    assert not node.dra_socket.exists()
    assert not node.registration_socket.exists()
    assert not (node.root / "state" / "status.sock").exists()
    assert node.fake.objects["resourceslices"]  # Left for the kubelet to manage.
    assert set(node.checkpoint()) == {"u1"}
    down = read_status(node.root / "state")
    assert down["daemon"] == "down"
    assert [c["uid"] for c in down["claims"]] == ["u1"]


async def test_newer_checkpoint_refuses_to_start(node: Node) -> None:
    state = node.root / "state"
    state.mkdir()
    (state / "checkpoint.json").write_text(
        '{"format": "dracpu-checkpoint", "version": 99, "sha256": "", "body": {}}'
    )
    proc = await spawn(node.argv(), {**os.environ, "PYTHONPATH": str(REPO)}, node.root / "log")
    node.procs.append(proc)
    with trio.fail_after(30):
        assert await proc.wait() == 1
    log = (node.root / "log").read_text()
    assert "refusing to start" in log
    assert "format version 99" in log
    assert not node.dra_socket.exists()


async def test_second_signal_exits_at_once(node: Node) -> None:
    proc = await node.start()
    assert (await node.prepare("u1")).claims["u1"].error == ""
    # Two different signals back to back (trio coalesces repeats of one signal): the second
    # arrives while the graceful stop is under way.
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    assert await stop(proc, 0) == 1
    log = (node.root / "log").read_text()
    assert "stopping (sockets removed, slices and state kept)" in log
    assert "second signal" in log
    assert "exiting now" in log
    assert set(node.checkpoint()) == {"u1"}  # The state was on disk all along.
