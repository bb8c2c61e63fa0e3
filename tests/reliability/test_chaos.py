"""The fast chaos run: the real daemon (``dracpu run``, a subprocess) with grpcio as the kubelet,
the Go NRI peer (tests/peers/nri) as the runtime and the fake API server over HTTP, driven by
seeded random pod churn while seeded faults hit it:

- kill -9 of the daemon at a random moment, right after a kubelet request was sent;
- kill inside prepare, unprepare and the NRI CreateContainer handler, at each effect boundary
  (``DRACPU_TEST_CRASH_AT=POINT@EVENT``, see ``dracpu/daemon/owner.py``);
- the runtime going away and coming back (its NRI socket closes; the new runtime keeps the
  running containers and synchronizes them);
- an API server outage.

After each fault the daemon is restarted (if it died), the kubelet retries what failed, and the
invariants of :mod:`tests.reliability.invariants` must hold once the node settles; at the end
every pod is deleted and nothing may be left. ``just chaos`` is the long version on the rig.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from dracpu.cdi import CdiDir
from dracpu.checkpoint import CheckpointStore
from dracpu.core.cpuset import CpuSet
from dracpu.daemon.owner import CRASH_EXIT_STATUS, CRASH_POINTS, Owner
from dracpu.daemon.status import read_status
from dracpu.errors import DracpuError
from dracpu.sysfs import read_topology
from tests.daemon.support import (
    NODE,
    claim,
    dra_api,
    grouped,
    kubelet_call,
    short_dir,
    write_machine,
)
from tests.daemon.test_crash import spawn
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.fake_http import serve_fake_http, write_kubeconfig
from tests.nri.peer import NriPeer, PeerError, build_peer, open_peer
from tests.reliability import invariants as inv

REPO = Path(__file__).resolve().parents[2]
SEED = 15
STEPS = 36
NRI_VERSION = "v0.12.0"  # The rig's containerd 2.3 line.
SYNCED = "NRI: plugin 90-dra.cpu registered and synchronized"
ALL = "0-15"
SETTLE = 15.0


@dataclass
class Pod:
    id: str
    claim: str | None = None  # Claim UID (exclusive pod) or None (shared pod).
    containers: list[str] = field(default_factory=list)


@dataclass
class Chaos:
    """One node under chaos: the daemon process, the runtime peer and the kubelet's view."""

    root: Path
    fake: FakeApiServer
    nursery: trio.Nursery
    peer_binary: Path
    rng: random.Random
    peer: NriPeer | None = None
    proc: trio.Process | None = None
    pods: dict[str, Pod] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=lambda: {"cpudevnuma000": 0, "cpudevnuma001": 0})
    faults: dict[str, int] = field(default_factory=dict)
    checks: int = 0
    violations: list[str] = field(default_factory=list)
    serial: int = 0
    armed: str = ""  # The crash point the running daemon was started with, if any.
    api = dra_api("v1")

    @property
    def socket(self) -> Path:
        return self.root / "nri.sock"

    @property
    def dra_socket(self) -> Path:
        return self.root / "kubelet" / "plugins" / "dra.cpu" / "dra.sock"

    @property
    def log(self) -> Path:
        return self.root / "log"

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
            f"--nri-socket={self.socket}",
            "--enforcement=nri",
            "--release-grace-period=0",
        ]

    def fault(self, name: str) -> None:
        self.faults[name] = self.faults.get(name, 0) + 1

    # --- the processes ------------------------------------------------------------------
    def synced_count(self) -> int:
        return self.log.read_text(errors="replace").count(SYNCED) if self.log.exists() else 0

    async def start_daemon(self, crash_at: str | None = None) -> None:
        """Start ``dracpu run`` and wait until the kubelet socket is there and NRI synced."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRACPU_")}
        env["PYTHONPATH"] = str(REPO)
        if crash_at:
            env["DRACPU_TEST_CRASH_AT"] = crash_at
        reg = self.root / "kubelet" / "plugins_registry" / "dra.cpu-reg.sock"
        for path in (self.dra_socket, reg):
            path.unlink(missing_ok=True)
        before = self.synced_count()
        self.proc = await spawn(self.argv(), env, self.log)
        with trio.fail_after(40):
            while not (reg.exists() and self.synced_count() > before):
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                await trio.sleep(0.05)

    async def kill_daemon(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            with trio.fail_after(20):
                await self.proc.wait()

    async def ensure_daemon(self) -> None:
        """The DaemonSet's restart: start the daemon again if it is not running."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                if await self.proc.wait() == CRASH_EXIT_STATUS and self.armed:
                    self.fault(self.armed)
                self.armed = ""
            await self.start_daemon()

    async def start_peer(self, keep: list[dict[str, Any]] | None = None) -> None:
        """A (new) runtime on the NRI socket, holding ``keep``'s running containers."""
        self.peer = await open_peer(self.nursery, self.peer_binary)
        for pod in self.pods:
            await self.peer.command("add-pod", pod=pod)
        for c in keep or []:
            await self.peer.command(
                "add-container", pod=c["pod"], id=c["id"], env=c["env"], cpus=c["cpus"]
            )
        await self.peer.command("start", socket=str(self.socket))

    async def restart_runtime(self) -> None:
        """The runtime dies (its NRI socket and connection go away) and comes back with the
        same running containers; the daemon reconnects and synchronizes."""
        assert self.peer is not None
        self.fault("runtime restart (NRI socket gone and back)")
        running = await self.containers()
        before = self.synced_count()
        self.peer.kill()
        with trio.fail_after(10):
            await self.peer.process.wait()
        self.socket.unlink(missing_ok=True)
        await trio.sleep(self.rng.uniform(0.1, 1.0))
        await self.start_peer(running)
        with trio.fail_after(30):
            while self.synced_count() <= before:
                await self.ensure_daemon()
                await trio.sleep(0.05)

    async def containers(self) -> list[dict[str, Any]]:
        assert self.peer is not None
        listed: list[dict[str, Any]] = await self.peer.command("containers")
        return [c for c in listed if c["state"] == "CONTAINER_RUNNING"]

    # --- the kubelet --------------------------------------------------------------------
    async def kubelet(self, op: str, uid: str) -> str:
        """One kubelet call for claim ``uid``; the claim's error ("" when done), or
        ``"unavailable"`` when the daemon did not answer."""
        try:
            rsp = await kubelet_call(self.dra_socket, self.api, op, [("ns", f"claim-{uid}", uid)])
        except grpc.RpcError:
            return "unavailable"
        return str(rsp.claims[uid].error)

    async def until_done(self, op: str, uid: str) -> None:
        """The kubelet retries ``op`` until it succeeds, the daemon restarted when down."""
        for _ in range(20):
            await self.ensure_daemon()
            error = await self.kubelet(op, uid)
            if error == "":
                return
            await trio.sleep(0.2)
        raise AssertionError(f"{op} of {uid} never succeeded; log:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    # --- the runtime creating containers ---------------------------------------------------
    async def create(self, pod: Pod, env: list[str]) -> None:
        """CreateContainer + StartContainer; a create refused because the plugin vanished is
        retried by the kubelet once the daemon is back."""
        assert self.peer is not None
        self.serial += 1
        cid = f"{pod.id}-c{self.serial}"
        for _ in range(20):
            try:
                await self.peer.command("create", pod=pod.id, id=cid, env=env, cpus=ALL)
                break
            except PeerError:
                await self.ensure_daemon()
                await trio.sleep(0.2)
        else:
            raise AssertionError(f"CreateContainer of {cid} kept failing:\n{self.log_tail()}")
        pod.containers.append(cid)
        await self.peer.command("start-container", id=cid)

    # --- pod churn ----------------------------------------------------------------------
    def new_pod(self) -> Pod:
        self.serial += 1
        pod = Pod(f"p{self.serial}")
        self.pods[pod.id] = pod
        return pod

    async def add_exclusive(self) -> bool:
        """The scheduler allocates a claim (1-3 CPUs of a NUMA device with room, keeping 2 CPUs
        shared), the kubelet prepares it and the runtime starts its container."""
        n = self.rng.randint(1, 3)
        room = [d for d, used in self.used.items() if used + n <= 8]
        if sum(self.used.values()) + n > 14 or not room:
            return False
        device = self.rng.choice(room)
        self.used[device] += n
        pod = self.new_pod()
        uid = f"u{self.serial}"
        pod.claim = uid
        self.fake.put_object("resourceclaims", claim(uid, [grouped("req", device, n)]))
        await self.until_done("prepare", uid)
        cpus = inv.read_cdi(self.root / "cdi")[uid]  # What the runtime injects from CDI.
        assert self.peer is not None
        await self.peer.command("add-pod", pod=pod.id)
        await self.create(pod, [f"DRA_CPUSET_{uid}={cpus}", "PATH=/bin"])
        return True

    async def add_shared(self) -> None:
        pod = self.new_pod()
        assert self.peer is not None
        await self.peer.command("add-pod", pod=pod.id)
        await self.create(pod, ["PATH=/bin"])

    async def delete(self, pod: Pod) -> None:
        """The kubelet stops and removes the containers, then unprepares the claim."""
        assert self.peer is not None
        for cid in pod.containers:
            for op in ("stop-container", "remove-container"):
                try:
                    await self.peer.command(op, id=cid)
                except PeerError as exc:
                    if "no container" not in str(exc):
                        raise
        if pod.claim is not None:
            await self.until_done("unprepare", pod.claim)
            spec = self.fake.objects["resourceclaims"][f"ns/claim-{pod.claim}"]
            result = spec["status"]["allocation"]["devices"]["results"][0]
            self.used[result["device"]] -= int(result["consumedCapacity"]["dra.cpu/cpu"])
            self.fake.remove_object("resourceclaims", f"ns/claim-{pod.claim}")
        del self.pods[pod.id]

    # --- faults -------------------------------------------------------------------------
    async def kill_at_random(self) -> None:
        """kill -9 0-30 ms after the kubelet sent a prepare or an unprepare (the kubelet's
        retries restart the daemon, as its DaemonSet would)."""
        exclusive = [p for p in self.pods.values() if p.claim]
        unprepare = bool(exclusive) and self.rng.random() < 0.5
        self.fault(f"kill -9 after a kubelet {'unprepare' if unprepare else 'prepare'}")
        async with trio.open_nursery() as n:
            if unprepare:
                n.start_soon(self.delete, self.rng.choice(exclusive))
            else:
                n.start_soon(self.add_exclusive)
            await trio.sleep(self.rng.uniform(0.0, 0.03))
            await self.kill_daemon()

    async def crash_inside(self, event: str) -> None:
        """Restart the daemon with a crash point on ``event``, then make that event happen."""
        # A container event writes no checkpoint unless it adopts a claim: its points are the
        # reply's (inside the CreateContainer handler, before the runtime gets the answer).
        points = CRASH_POINTS if event != "ContainerCreated" else ("after-cdi", "before-reply")
        point = self.rng.choice(points)
        await self.kill_daemon()
        await self.start_daemon(crash_at=f"{point}@{event}")
        self.armed = f"kill inside {event} at {point}"
        if event == "Prepare":
            while not await self.add_exclusive():  # Make room, as pods finish.
                await self.delete(next(p for p in self.pods.values() if p.claim))
        elif event == "Unprepare":
            exclusive = [p for p in self.pods.values() if p.claim]
            if not exclusive:
                await self.add_exclusive()
                exclusive = [p for p in self.pods.values() if p.claim]
            await self.delete(self.rng.choice(exclusive))
        else:
            await self.add_shared()
        assert self.proc is not None
        with trio.move_on_after(1):
            await self.proc.wait()
        if self.armed:  # No retry has restarted it yet.
            reached = self.proc.poll() == CRASH_EXIT_STATUS
            self.fault(self.armed if reached else f"{self.armed} (not reached)")
            self.armed = ""
            await self.kill_daemon()
            await self.ensure_daemon()

    async def api_outage(self) -> None:
        self.fault("API server outage")
        self.fake.down = True
        await trio.sleep(self.rng.uniform(0.5, 2.0))
        self.fake.down = False

    # --- the checks ---------------------------------------------------------------------
    async def observe(self, quiescent: bool = False) -> inv.Observed:
        state = self.root / "state"
        status = await trio.to_thread.run_sync(read_status, state)
        containers = [
            inv.Container(
                f"container {c['id']} of pod {c['pod']}",
                dict(e.split("=", 1) for e in c.get("env") or [] if "=" in e),
                CpuSet.parse(c["cpus"]),
            )
            for c in await self.containers()
        ]
        topology = read_topology(self.root / "sys")
        claims = self.fake.objects.get("resourceclaims", {}).values()
        return inv.Observed(
            online=topology.online,
            checkpoint=inv.read_checkpoint(state),
            cdi=inv.read_cdi(self.root / "cdi"),
            status=status if status.get("daemon") == "up" else None,
            containers=containers,
            node=NODE,
            api_claims={o["metadata"]["uid"]: o for o in claims},
            slices=list(self.fake.objects.get("resourceslices", {}).values()),
            expected_devices=inv.expected_devices(
                topology, node=NODE, mode="grouped", group_by="numanode"
            ),
            quiescent=quiescent,
        )

    async def settle_and_check(self, after: str, quiescent: bool = False) -> None:
        """Wait (up to SETTLE s) for the invariants to hold; record what is still violated."""
        await self.ensure_daemon()
        self.checks += 1
        deadline = time.monotonic() + SETTLE
        while True:
            found = inv.check(await self.observe(quiescent))
            if not found or time.monotonic() > deadline:
                break
            await trio.sleep(0.2)
        self.violations += [f"after {after}: {v}" for v in found]

    def table(self) -> str:
        rows = [f"{'fault':<48} {'count':>5}"]
        rows += [f"{k:<48} {v:>5}" for k, v in sorted(self.faults.items())]
        rows.append(f"{'invariant checks':<48} {self.checks:>5}")
        rows.append(f"{'violations':<48} {len(self.violations):>5}")
        return "\n".join(rows)


async def run_chaos(chaos: Chaos, steps: int) -> None:
    """``steps`` seeded steps of churn and faults, a check after each fault, then a drain."""
    await chaos.start_peer()
    await chaos.start_daemon()
    rng = chaos.rng
    kinds: list[Callable[[], Awaitable[None]]] = [
        chaos.kill_at_random,
        partial(chaos.crash_inside, "Prepare"),
        partial(chaos.crash_inside, "Unprepare"),
        partial(chaos.crash_inside, "ContainerCreated"),
        chaos.restart_runtime,
        chaos.api_outage,
    ]
    # Every kind of fault twice, in a seeded order, between seeded churn.
    schedule = kinds * 2
    rng.shuffle(schedule)
    every = max(1, steps // len(schedule))
    for step in range(steps):
        roll = rng.random()
        if schedule and step % every == 0:
            await schedule.pop()()
            await chaos.settle_and_check(f"step {step}")
        elif roll < 0.45:
            await chaos.add_exclusive()
        elif roll < 0.7:
            await chaos.add_shared()
        elif chaos.pods:
            await chaos.delete(chaos.pods[rng.choice(sorted(chaos.pods))])
    for pod in list(chaos.pods.values()):
        await chaos.delete(pod)
    await chaos.settle_and_check("the drain", quiescent=True)


@pytest.fixture
async def chaos(nursery: trio.Nursery) -> AsyncIterator[Chaos]:
    with short_dir("dch-") as root:
        write_machine(root)
        fake = FakeApiServer()
        fake.put_object("nodes", {"metadata": {"name": NODE}})
        port = await nursery.start(serve_fake_http, fake)
        write_kubeconfig(root / "kubeconfig", port)
        binary = await trio.to_thread.run_sync(build_peer, NRI_VERSION)
        c = Chaos(root, fake, nursery, binary, random.Random(SEED))
        try:
            yield c
        finally:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGKILL)
                await c.proc.wait()
            if c.peer is not None:
                c.peer.kill()


@pytest.mark.timeout(120)
async def test_chaos_fixed_seed_keeps_every_invariant(chaos: Chaos) -> None:
    started = time.monotonic()
    await run_chaos(chaos, STEPS)
    print(f"\nchaos seed {SEED}, {STEPS} steps, {time.monotonic() - started:.1f} s")
    print(chaos.table())
    assert sum(chaos.faults.values()) >= 10, chaos.faults
    assert chaos.violations == [], "\n".join(chaos.violations)


def test_invariants_catch_each_kind_of_violation() -> None:
    """The checker is not vacuous: each invariant, broken on purpose, is reported."""
    online = CpuSet.parse(ALL)
    held = {"a": CpuSet.parse("0-1"), "b": CpuSet.parse("1-2")}
    obs = inv.Observed(
        online=online,
        checkpoint=held,
        cdi={"a": CpuSet.parse("0-1"), "z": CpuSet.parse("9")},
        status={"claims": [{"uid": "a", "cpus": "0-1", "devices": []}], "sharedPool": "2-15"},
        containers=[
            inv.Container("ex", {"DRA_CPUSET_a": "0-1"}, CpuSet.parse("0-2")),
            inv.Container("sh", {}, CpuSet.parse("1-4")),
            inv.Container("ghost", {"DRA_CPUSET_q": "5"}, CpuSet.parse("5")),
        ],
        node=NODE,
        api_claims={},
        slices=[],
        expected_devices={"cpudevnuma000": CpuSet.parse("0-7")},
        quiescent=True,
    )
    found = inv.check(obs)
    text = "\n".join(found)
    for tag in (
        "two-claims: CPU 1 is held by a and b (checkpoint)",
        "checkpoint: on disk",
        "exclusive: ex runs on 0-2, its claims hold 0-1",
        "shared: sh runs on 1-4",
        "exclusive: ghost names claim q, which is not prepared",
        "cdi: orphan spec for claim z",
        "leak: no pod is left but claims are prepared",
        "leak: no pod is left but the shared pool is 2-15",
        "checkpoint: claim a (0-1) is prepared but gone from the API",
        "slices: devices missing ['cpudevnuma000']",
    ):
        assert tag in text, f"{tag!r} not in:\n{text}"


def test_crash_point_names_a_bad_event() -> None:
    """``DRACPU_TEST_CRASH_AT=POINT@EVENT`` refuses an unknown point or event, naming it."""
    with short_dir("dco-") as root:
        parts = {"checkpoint": CheckpointStore(root / "s"), "cdi": CdiDir(root / "c")}
        state: Any = None
        with pytest.raises(DracpuError, match=r"crash event 'Prepared'.*one of Prepare, Unprepare"):
            Owner(state, crash_at="after-cdi@Prepared", **parts)  # type: ignore[arg-type]
        with pytest.raises(DracpuError, match="crash point 'mid'"):
            Owner(state, crash_at="mid@Prepare", **parts)  # type: ignore[arg-type]
        owner = Owner(state, crash_at="before-reply@ContainerCreated", **parts)
        assert (owner.crash_at, owner.crash_on) == ("before-reply", "ContainerCreated")
