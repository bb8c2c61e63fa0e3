"""The one owner of the node state: applies transitions and runs their effects, in order.

Every event (kubelet prepare/unprepare today; NRI container events and topology changes in
later issues) reaches :class:`Owner` through one trio memory channel. The owner task takes an
event, calls the pure :func:`dracpu.core.node.step`, runs the effects and stores the new state,
all without an ``await`` in between, so no two transitions interleave and a trio cancellation
cannot stop an effect half-way: the synchronous effects (checkpoint, CDI files) are atomic with
respect to cancellation by construction. Effects that need the network (claim status) are handed
to a background writer and are replay-safe.

Write-ahead: ``WriteCheckpoint`` comes first. Events that queued up together are committed as a
group: they are stepped in order and one durable write of the final state covers them all. If
it fails, the new state is *not* stored and every batch of the group fails (the kubelet
retries); nothing else ran. If a CDI write fails after the
checkpoint, the state stays (the checkpoint says the claim is prepared) and that claim fails;
the kubelet's retry gets the same CPUs and rewrites the spec.

``crash_at`` (tests only, from ``DRACPU_TEST_CRASH_AT``) makes the process exit at once with
status 86 at an effect boundary: ``after-checkpoint``, ``after-cdi`` or ``before-reply``.
``POINT@EVENT`` crashes there only while applying an event of that class of
:mod:`dracpu.core.node` (``Prepare``, ``Unprepare``, ``ContainerCreated``, ...), so a chaos run
can kill the daemon mid-unprepare or inside an NRI handler without crashing on the first
Synchronize. Unset (the default), nothing is checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

import trio

from dracpu.cdi import CdiDir
from dracpu.checkpoint import CheckpointStore
from dracpu.core import node
from dracpu.daemon.snapshot_json import SnapshotJson
from dracpu.errors import DracpuError
from dracpu.memory_cdi import MemoryCdiDir

__all__ = ["CRASH_EVENTS", "CRASH_EXIT_STATUS", "CRASH_POINTS", "Applied", "EffectTimes", "Owner"]

_log = logging.getLogger(__name__)

CRASH_POINTS = ("after-checkpoint", "after-cdi", "before-reply")
CRASH_EXIT_STATUS = 86
CRASH_EVENTS = tuple(t.__name__ for t in typing.get_args(node.Event))

Reply = (
    node.ReplyPrepare
    | node.ReplyPrepareMemory
    | node.ReplyUnprepare
    | node.AdjustContainer
    | node.RejectContainer
    | node.ReplyUpdate
    | node.ReplySynchronize
)


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one event: the reply effect (None if the event has none) and, when the
    checkpoint could not be written, ``error`` (the state was not changed)."""

    reply: Reply | None
    error: str | None = None
    effects: tuple[node.Effect, ...] = ()


@dataclass(slots=True)
class EffectTimes:
    """Cumulative seconds spent per effect kind, and events applied (for bench and status)."""

    events: int = 0
    checkpoint: float = 0.0
    cdi: float = 0.0
    total: float = 0.0
    checkpoint_writes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class Owner:
    """Holds the :class:`~dracpu.core.node.NodeState`; see the module docstring.

    ``on_claim_status`` receives ``WriteClaimStatus`` effects (it must not block: the daemon
    queues them for a writer task); ``on_republish`` is called for ``RepublishSlices`` with the
    new state; ``on_containers`` receives container updates (the NRI plugin, a later issue).
    """

    def __init__(
        self,
        state: node.NodeState,
        *,
        checkpoint: CheckpointStore,
        cdi: CdiDir,
        on_claim_status: Callable[[node.WriteClaimStatus], None] = lambda _: None,
        on_republish: Callable[[node.NodeState], None] = lambda _: None,
        on_containers: Callable[[node.Effect], None] = lambda _: None,
        crash_at: str | None = None,
        memory_cdi: MemoryCdiDir | None = None,
        queue: int = 256,
        max_group: int = 128,
    ) -> None:
        self.crash_at, self.crash_on = _parse_crash_at(crash_at)
        self._state = state
        self.checkpoint = checkpoint
        self.cdi = cdi
        self.memory_cdi = memory_cdi or MemoryCdiDir(cdi.root)
        self.on_claim_status = on_claim_status
        self.on_republish = on_republish
        self.on_containers = on_containers
        self.on_checkpoint_written: Callable[[float], None] = lambda _: None
        """Called with the seconds of each successful checkpoint write (metrics; any thread)."""
        self.max_group = max_group
        self._snapshot_json = SnapshotJson()
        self.times = EffectTimes()
        self._send, self._receive = trio.open_memory_channel[
            tuple[node.Event, trio.MemorySendChannel[Applied]]
        ](queue)
        self._queued = 0  # events handed to apply() and not yet taken by the owner task
        self._busy = False  # the owner task is applying a group

    @property
    def state(self) -> node.NodeState:
        """The current state (immutable; safe to read from any task)."""
        return self._state

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Apply events until cancelled, in groups: every event waiting in the channel when the
        owner gets to it is stepped in order, then one durable checkpoint write covers the whole
        group (group commit), then each event's other effects run and each caller gets its
        answer. The checkpoint is written in a worker thread, shielded, so the event loop (and
        the kubelet's other calls) keep going while the disk syncs; no other task can apply a
        transition meanwhile, as only this task applies them.

        Cancellation: only between groups; a group taken from the channel is applied in full.
        """
        task_status.started()
        async for item in self._receive:
            self._busy = True
            try:
                batch = [item]
                while len(batch) < self.max_group:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                self._queued -= len(batch)
                events = [event for event, _ in batch]
                with trio.CancelScope(shield=True):
                    state, steps, body = self._step_group(events)
                    error = None
                    if body is not None:
                        error = await trio.to_thread.run_sync(self._write_checkpoint, body)
                results = self._finish_group(events, state, steps, error, body is not None)
                for (_, reply_to), applied in zip(batch, results, strict=True):
                    # If the caller was cancelled, the kubelet retries and gets the same answer.
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        reply_to.send_nowait(applied)
            finally:
                self._busy = False
            await trio.lowlevel.checkpoint()
        raise AssertionError("unreachable: the owner keeps its own send channel open")

    async def apply(self, event: node.Event) -> Applied:
        """Hand ``event`` to the owner task and wait for the outcome.

        Cancellation: if cancelled after the event was queued, the event is still applied
        (and its effects run); only the answer is lost. Applying the same prepare or unprepare
        again is idempotent.
        """
        reply_send, reply_receive = trio.open_memory_channel[Applied](1)
        async with reply_receive:
            self._queued += 1
            try:
                await self._send.send((event, reply_send))
            except BaseException:
                self._queued -= 1  # cancelled before it was queued: never applied
                raise
            return await reply_receive.receive()

    def try_apply_now(self, event: node.Event) -> Applied | None:
        """Apply ``event`` in the calling task, at once, when that is the same as queueing it:
        the owner task is idle (no group being applied or written) and no event is queued
        before it. None when it is not, or when the event asks for a checkpoint (the owner
        task writes those, in a worker thread); the state is then unchanged. NRI container
        events take this path: they need no write, so the runtime's wait costs no task hop.
        Synchronous: nothing can interleave."""
        if self._busy or self._queued:
            return None
        state, effects = node.step(self._state, event)
        if any(isinstance(e, node.WriteCheckpoint) for e in effects):
            return None
        self._state = state
        return self._run_effects(event, state, effects)

    def apply_now(self, event: node.Event) -> Applied:
        """Apply one event in the calling task (start-up before any server runs, tests).
        Synchronous: nothing can interleave."""
        state, steps, body = self._step_group([event])
        error = self._write_checkpoint(body) if body is not None else None
        return self._finish_group([event], state, steps, error, body is not None)[0]

    def _step_group(
        self, events: Sequence[node.Event]
    ) -> tuple[node.NodeState, list[tuple[node.Effect, ...]], bytes | None]:
        """Step every event in order from the current state (pure); the checkpoint body of the
        final state (canonical JSON) when any step asks for a checkpoint, else None."""
        state = self._state
        steps = []
        wants = False
        for event in events:
            state, effects = node.step(state, event)
            steps.append(effects)
            wants = wants or any(isinstance(e, node.WriteCheckpoint) for e in effects)
        return state, steps, self._snapshot_json.encode(state) if wants else None

    def _write_checkpoint(self, body_json: bytes) -> str | None:
        """Write the checkpoint; the error text, or None. Runs in a worker thread too."""
        t0 = time.perf_counter()
        try:
            self.checkpoint.write_canonical(body_json)
        except DracpuError as exc:
            _log.error("state change refused: %s", exc)
            return f"cannot persist the node state: {exc}"
        elapsed = time.perf_counter() - t0
        self.times.checkpoint += elapsed
        self.times.checkpoint_writes += 1
        self.on_checkpoint_written(elapsed)
        return None

    def _finish_group(
        self,
        events: Sequence[node.Event],
        state: node.NodeState,
        steps: list[tuple[node.Effect, ...]],
        error: str | None,
        wrote: bool,
    ) -> list[Applied]:
        """Store the group's state (unless its checkpoint failed) and run the other effects."""
        if error is not None:
            return [Applied(reply=None, error=error) for _ in steps]
        self._state = state  # Durable now (or nothing needed persisting): this is the truth.
        if wrote:
            self._crash("after-checkpoint", *events)
        return [
            self._run_effects(event, state, effects)
            for event, effects in zip(events, steps, strict=True)
        ]

    def _run_effects(
        self, event: node.Event, state: node.NodeState, effects: tuple[node.Effect, ...]
    ) -> Applied:
        started = time.perf_counter()
        reply: Reply | None = None
        cdi_failed: dict[str, str] = {}
        self.times.events += 1
        for effect in effects:
            kind = type(effect).__name__
            self.times.by_kind[kind] = self.times.by_kind.get(kind, 0) + 1
            if isinstance(effect, node.WriteCheckpoint):
                continue  # Written once for the whole group before any other effect.
            if isinstance(
                effect,
                node.WriteCdiSpec
                | node.RemoveCdiSpec
                | node.WriteMemoryCdiSpec
                | node.RemoveMemoryCdiSpec,
            ):
                t0 = time.perf_counter()
                try:
                    if isinstance(effect, node.WriteCdiSpec):
                        self.cdi.write(effect.claim_uid, effect.cpus)
                    elif isinstance(effect, node.RemoveCdiSpec):
                        self.cdi.remove(effect.claim_uid)
                    elif isinstance(effect, node.WriteMemoryCdiSpec):
                        self.memory_cdi.write(effect.claim_uid, effect.env)
                    else:
                        self.memory_cdi.remove(effect.claim_uid)
                except DracpuError as exc:
                    _log.error("%s", exc)
                    cdi_failed[effect.claim_uid] = str(exc)
                self.times.cdi += time.perf_counter() - t0
            elif isinstance(effect, node.WriteClaimStatus):
                self.on_claim_status(effect)
            elif isinstance(effect, node.RepublishSlices):
                _log.info("republishing slices: %s", effect.reason)
                self.on_republish(state)
            elif isinstance(effect, node.ReportOfflineClaims):
                for ref, cpus in effect.offline:
                    _log.warning("claim %s holds CPUs %s that are now offline", ref, cpus)
            elif isinstance(effect, node.UpdateContainers):
                self.on_containers(effect)
            else:
                reply = effect
        if reply is not None:
            self._crash("after-cdi", event)
            reply = _with_cdi_failures(reply, cdi_failed)
            self._crash("before-reply", event)
        self.times.total += time.perf_counter() - started
        return Applied(reply=reply, effects=effects)

    def _crash(self, point: str, *events: node.Event) -> None:
        if self.crash_at != point:
            return
        if self.crash_on is None or any(type(e).__name__ == self.crash_on for e in events):
            _log.critical("test crash point %s reached: exiting now", point)
            logging.shutdown()
            os._exit(CRASH_EXIT_STATUS)


def _parse_crash_at(spec: str | None) -> tuple[str | None, str | None]:
    """``POINT`` or ``POINT@EVENT`` (``DRACPU_TEST_CRASH_AT``) -> (point, event class or None)."""
    if spec is None:
        return None, None
    point, _, event = spec.partition("@")
    if point not in CRASH_POINTS:
        raise DracpuError(f"crash point {point!r} is not one of {', '.join(CRASH_POINTS)}")
    if event and event not in CRASH_EVENTS:
        raise DracpuError(
            f"crash event {event!r} (DRACPU_TEST_CRASH_AT={spec!r}) is not one of "
            f"{', '.join(CRASH_EVENTS)}"
        )
    return point, event or None


def _with_cdi_failures(reply: Reply, failed: Mapping[str, str]) -> Reply:
    """Turn the claims whose CDI file could not be written or removed into failures."""
    if not failed:
        return reply
    if isinstance(reply, node.ReplyPrepare | node.ReplyPrepareMemory | node.ReplyUnprepare):
        results: dict[str, Any] = dict(reply.results)
        for uid, error in failed.items():
            if uid in results:
                results[uid] = node.ClaimFailed(error)
        # mypy cannot type dataclasses.replace over a union; each member has ``results``.
        return dataclasses.replace(cast(Any, reply), results=results)  # type: ignore[no-any-return]
    return reply
