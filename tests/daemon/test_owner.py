"""The owner's write-ahead rules and the supervised group's restart-as-a-unit."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from dracpu.backoff import Backoff
from dracpu.cdi import CdiDir
from dracpu.checkpoint import CheckpointStore
from dracpu.core import node
from dracpu.core.claims import Claim, ClaimRef, DeviceResult
from dracpu.core.pinning import ContainerInfo, PodInfo
from dracpu.daemon.owner import Applied, Owner
from dracpu.daemon.run import supervise
from tests.support.topologies import make_topology

TOPOLOGY = make_topology(2, 1, 4, 2)
CONFIG = node.NodeConfig(pool="n")
REF = ClaimRef("ns", "c", "u1")
CLAIM = Claim(REF, (DeviceResult("req", "n", "cpudevnuma000", cpus=2),))


def owner(tmp_path: Path, state_dir: Path | None = None) -> Owner:
    return Owner(
        node.NodeState.initial(TOPOLOGY, CONFIG),
        checkpoint=CheckpointStore(state_dir or tmp_path / "state", durable=False),
        cdi=CdiDir(tmp_path / "cdi"),
    )


async def test_apply_runs_checkpoint_then_cdi_then_replies(tmp_path: Path) -> None:
    o = owner(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(o.run)
        applied = await o.apply(node.Prepare((REF,), {"u1": CLAIM}))
        nursery.cancel_scope.cancel()
    assert applied.error is None
    assert isinstance(applied.reply, node.ReplyPrepare)
    prepared = applied.reply.results["u1"]
    assert isinstance(prepared, node.ClaimPrepared)
    kinds = [type(e).__name__ for e in applied.effects]
    assert kinds[0] == "WriteCheckpoint"
    assert kinds.index("WriteCdiSpec") < kinds.index("ReplyPrepare")
    assert CdiDir(tmp_path / "cdi").read_all() == {"u1": prepared.claim.cpus}
    assert o.state.claims["u1"].cpus == prepared.claim.cpus


def test_failed_checkpoint_changes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    o = owner(tmp_path, state_dir=blocker / "state")
    before = o.state
    applied = o.apply_now(node.Prepare((REF,), {"u1": CLAIM}))
    assert applied.error is not None
    assert "cannot persist the node state" in applied.error
    assert o.state is before
    assert CdiDir(tmp_path / "cdi").read_all() == {}  # Nothing ran after the failed write.


def test_failed_cdi_write_fails_that_claim_but_keeps_the_state(tmp_path: Path) -> None:
    (tmp_path / "cdi").write_text("not a directory")
    o = owner(tmp_path)
    applied = o.apply_now(node.Prepare((REF,), {"u1": CLAIM}))
    assert isinstance(applied.reply, node.ReplyPrepare)
    failed = applied.reply.results["u1"]
    assert isinstance(failed, node.ClaimFailed)
    assert "cannot write CDI spec" in failed.error
    assert "u1" in o.state.claims  # The checkpoint says prepared: a retry gets the same CPUs.


async def test_cancelled_caller_still_gets_its_event_applied(tmp_path: Path) -> None:
    o = owner(tmp_path)
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            scope.cancel()
            # Cancelled before the send: nothing happens.
            await o.apply(node.Prepare((REF,), {"u1": CLAIM}))
        assert o.state.claims == {}
        await nursery.start(o.run)
        with trio.move_on_after(0) as scope2:
            await o.apply(node.Prepare((REF,), {"u1": CLAIM}))
        assert scope2.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    # Either the event never got queued or it was applied in full: never half.
    cdi = CdiDir(tmp_path / "cdi").read_all()
    assert ("u1" in o.state.claims) == ("u1" in cdi)


async def test_supervised_group_restarts_as_a_unit(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    starts = {"flaky": 0, "steady": 0}
    cancelled = []
    reasons: list[str] = []

    async def flaky() -> None:
        starts["flaky"] += 1
        await trio.sleep(1)
        if starts["flaky"] < 3:
            raise RuntimeError(f"boom {starts['flaky']}")
        await trio.sleep_forever()

    async def steady() -> None:
        starts["steady"] += 1
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(trio.current_time())
            raise

    def group() -> list[tuple[str, object]]:
        return [("flaky", flaky), ("steady", steady)]

    with caplog.at_level(logging.ERROR), trio.move_on_after(100):
        await supervise(group, Backoff(initial=2.0, maximum=10.0), reasons.append)  # type: ignore[arg-type]
    assert starts == {"flaky": 3, "steady": 3}
    assert len(cancelled) == 3  # twice by the failures, once by the test's timeout
    assert reasons == ["flaky: RuntimeError: boom 1", "flaky: RuntimeError: boom 2"]
    assert "restarting it in" in caplog.text


async def test_events_queued_together_share_one_checkpoint_write(tmp_path: Path) -> None:
    o = owner(tmp_path)
    results: dict[str, Applied] = {}
    refs = [ClaimRef("ns", f"c{i}", f"u{i}") for i in range(5)]

    async def prepare(ref: ClaimRef) -> None:
        claim = Claim(ref, (DeviceResult("req", "n", "cpudevnuma000", cpus=1),))
        results[ref.uid] = await o.apply(node.Prepare((ref,), {ref.uid: claim}))

    async with trio.open_nursery() as nursery:
        for ref in refs:
            nursery.start_soon(prepare, ref)
        await trio.testing.wait_all_tasks_blocked()  # All five are queued; the owner is not up.
        await nursery.start(o.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert o.checkpoint.writes == 1
    held = [o.state.claims[r.uid].cpus for r in refs]
    assert len(set().union(*[set(c) for c in held])) == 5  # No CPU twice.
    body = o.checkpoint.load().body
    assert body is not None
    assert sorted(c["uid"] for c in body["claims"]) == sorted(r.uid for r in refs)
    assert CdiDir(tmp_path / "cdi").read_all() == {r.uid: o.state.claims[r.uid].cpus for r in refs}


class GatedCheckpoint(CheckpointStore):
    """A checkpoint store whose writes wait (in the owner's worker thread) for ``gate``."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir, durable=False)
        self.gate = threading.Event()
        self.writing = threading.Event()

    def write_canonical(self, body_json: bytes) -> None:
        self.writing.set()
        self.gate.wait(10)
        super().write_canonical(body_json)


SHARED = node.ContainerCreated(ContainerInfo(PodInfo("pod-s"), "s1", "app"))


def test_try_apply_now_applies_a_container_event_at_once(tmp_path: Path) -> None:
    o = owner(tmp_path)
    applied = o.try_apply_now(SHARED)
    assert applied is not None
    assert isinstance(applied.reply, node.AdjustContainer)
    assert "s1" in o.state.containers
    assert o.checkpoint.writes == 0


def test_try_apply_now_leaves_events_that_need_a_checkpoint_to_the_owner(tmp_path: Path) -> None:
    o = owner(tmp_path)
    before = o.state
    assert o.try_apply_now(node.Prepare((REF,), {"u1": CLAIM})) is None
    assert o.state is before
    assert o.checkpoint.writes == 0


async def test_try_apply_now_never_overtakes_a_queued_or_running_group(tmp_path: Path) -> None:
    store = GatedCheckpoint(tmp_path / "state")
    o = Owner(
        node.NodeState.initial(TOPOLOGY, CONFIG), checkpoint=store, cdi=CdiDir(tmp_path / "cdi")
    )
    results: list[Applied] = []
    prepared = trio.Event()

    async def prepare() -> None:
        results.append(await o.apply(node.Prepare((REF,), {"u1": CLAIM})))
        prepared.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prepare)
            await trio.testing.wait_all_tasks_blocked()
            assert o.try_apply_now(SHARED) is None  # queued, the owner not running yet
            await nursery.start(o.run)
            await trio.to_thread.run_sync(store.writing.wait, 10)
            assert o.try_apply_now(SHARED) is None  # the group's write is in flight
            assert "s1" not in o.state.containers
            store.gate.set()
            await prepared.wait()
            applied = o.try_apply_now(SHARED)  # idle again
            nursery.cancel_scope.cancel()
    assert applied is not None
    assert isinstance(applied.reply, node.AdjustContainer)
    assert "u1" in o.state.claims
    assert "s1" in o.state.containers


async def test_a_send_cancelled_before_queueing_does_not_block_try_apply_now(
    tmp_path: Path,
) -> None:
    o = Owner(
        node.NodeState.initial(TOPOLOGY, CONFIG),
        checkpoint=CheckpointStore(tmp_path / "state", durable=False),
        cdi=CdiDir(tmp_path / "cdi"),
        queue=0,  # every send waits for the owner task, which is not running
    )
    with trio.move_on_after(0.05):
        await o.apply(SHARED)
    assert o.try_apply_now(SHARED) is not None
