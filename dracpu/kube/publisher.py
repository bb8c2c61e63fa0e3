"""Keep this node's ResourceSlices on the API server equal to the desired ones.

:class:`SlicePublisher` runs two tasks: a :class:`~dracpu.kube.watch.Reflector` that lists and
watches the slices with field selectors ``spec.nodeName=<node>,spec.driver=<driver>``, and a
reconcile loop that, whenever the watch reports a change or :meth:`SlicePublisher.set_desired`
gives new specs, asks :func:`~dracpu.core.slice_plan.plan_slices` for the difference and writes
it (deletes, then updates, then creates). The loop coalesces bursts (``settle`` seconds, e.g. the
kubelet deleting all slices at once), so a wipe is repaired within well under a second of the
watch event, and it sends nothing while nothing changes.

Failures never escape: the API server being unreachable, throttling, RBAC errors and validation
errors are recorded in :meth:`SlicePublisher.health` and retried with bounded exponential
backoff and jitter (validation errors more slowly: only a new desired state can fix them),
logged by the rule of :class:`dracpu.backoff.RetryLoop`.

Dropped fields: after every write the publisher compares what it sent with what the server
stored. If fields went missing (a feature gate is off on the API server, e.g.
``allowMultipleAllocations`` without DRAConsumableCapacity) it logs one warning line naming the
fields and the gates, reports them in the health status, and from then on compares against what
the server can store, so it does not rewrite the slices forever.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

import trio

from dracpu import DRIVER_NAME
from dracpu.backoff import Backoff, RetryLoop
from dracpu.core.slice_plan import (
    SliceDelete,
    SlicePlan,
    SliceWrite,
    StoredForm,
    check_desired,
    compare_content,
    content,
    missing_gates,
    plan_slices,
)
from dracpu.errors import InvalidValueError, KubeApiError
from dracpu.kube.client import JSON, KubeClient
from dracpu.kube.errors import (
    AlreadyExistsError,
    ApiUnreachableError,
    ConflictError,
    InvalidError,
    NotFoundError,
)
from dracpu.kube.resources import NODES, RESOURCE_SLICES
from dracpu.kube.watch import Change, Reflector

__all__ = ["PublisherHealth", "SlicePublisher"]

log = logging.getLogger("dracpu.kube.publisher")


@dataclass(frozen=True, slots=True)
class PublisherHealth:
    """A snapshot of the publisher's state for the daemon's health/status report.

    ``state`` is "starting" (no desired specs or no list yet), "in-sync", "syncing" or "error".
    ``missing_feature_gates``/``dropped_fields`` are non-empty when the API server drops fields.
    ``creates``/``updates``/``deletes`` count successful writes since start;
    ``early_watch_ends`` the slice watches that ended before their minimum lifetime.
    """

    state: str
    api_reachable: bool
    last_error: str | None
    missing_feature_gates: tuple[str, ...]
    dropped_fields: tuple[str, ...]
    generation: int
    slices: int
    creates: int
    updates: int
    deletes: int
    last_in_sync: float | None
    early_watch_ends: int = 0

    @property
    def ok(self) -> bool:
        """In sync with no dropped fields."""
        return self.state == "in-sync" and not self.missing_feature_gates


class SlicePublisher:
    """Publishes the desired ResourceSlice specs of one node and driver (see module docstring).

    ``owner_node`` adds an ownerReference to the Node (its UID read from the API) so slices are
    garbage-collected with the node. ``labels`` are added to every slice. Planning waits until
    changes paused for ``settle`` seconds (at most ``max_settle``), so bursts are coalesced;
    ``parallel_writes`` bounds the write calls in flight.
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        node_name: str,
        driver: str = DRIVER_NAME,
        owner_node: bool = True,
        labels: Mapping[str, str] | None = None,
        settle: float = 0.05,
        max_settle: float = 0.5,
        parallel_writes: int = 4,
        backoff: Backoff | None = None,
        race_backoff: Backoff | None = None,
        invalid_backoff: Backoff | None = None,
        watch_backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.node_name = node_name
        self.driver = driver
        self.owner_node = owner_node
        self.labels = dict(labels or {})
        self.settle = settle
        self.max_settle = max_settle
        self.parallel_writes = parallel_writes
        self.race_backoff = race_backoff or Backoff(initial=0.05, maximum=5.0)
        self.backoff = backoff or Backoff(initial=0.2, maximum=30.0)
        self.invalid_backoff = invalid_backoff or Backoff(initial=5.0, maximum=300.0)
        self._rng = rng or random.Random()
        self._retry = RetryLoop("publishing ResourceSlices", self.backoff, log, rng=self._rng)
        self.reflector = Reflector(
            client,
            RESOURCE_SLICES,
            field_selector=f"spec.nodeName={node_name},spec.driver={driver}",
            on_change=self._on_change,
            backoff=watch_backoff,
            rng=self._rng,
        )
        self._desired: list[JSON] | None = None
        self._stored_forms: dict[int, StoredForm] = {}
        self._dropped: dict[int, tuple[str, ...]] = {}
        self._reported_gates: tuple[str, ...] = ()
        self._node_uid: str | None = None
        self._generation = 0
        self._wake = trio.Event()
        self._kick = trio.Event()
        self._state = "starting"
        self._last_error: str | None = None
        self._unreachable = False
        self._last_in_sync: float | None = None
        self._counts = {"create": 0, "update": 0, "delete": 0}
        self.in_sync = trio.Event()

    # --- inputs -----------------------------------------------------------------------------

    def set_desired(self, specs: Sequence[Mapping[str, Any]]) -> None:
        """Replace the desired slice specs (copied); publishing follows asynchronously.

        Raises :class:`InvalidValueError` if a spec is for another driver, node or pool.
        """
        check_desired(specs, driver=self.driver, node=self.node_name)
        new = [dict(s) for s in specs]
        if new != self._desired:
            self._desired = new
            self.in_sync = trio.Event()
            if self._state == "in-sync":
                self._state = "syncing"
            self._kick.set()
            self._wake.set()

    def _on_change(self, change: Change) -> None:
        self._wake.set()
        if change.kind == "RELISTED":
            # A fresh list: the API server is (back) up; do not sit out a backoff wait.
            self._kick.set()

    # --- outputs ----------------------------------------------------------------------------

    def health(self) -> PublisherHealth:
        """The current health snapshot (cheap; no I/O)."""
        dropped = tuple(sorted({p for paths in self._dropped.values() for p in paths}))
        return PublisherHealth(
            state=self._state,
            api_reachable=self.reflector.healthy and not self._unreachable,
            last_error=self._last_error or self.reflector.last_error,
            missing_feature_gates=tuple(missing_gates(dropped)),
            dropped_fields=dropped,
            generation=self._generation,
            slices=len(self.reflector.store),
            creates=self._counts["create"],
            updates=self._counts["update"],
            deletes=self._counts["delete"],
            last_in_sync=self._last_in_sync,
            early_watch_ends=self.reflector.early_watch_ends,
        )

    # --- loop -------------------------------------------------------------------------------

    async def run(self) -> NoReturn:
        """Watch and reconcile until cancelled; never raises KubeApiError.

        Cancellation: stops at once. A write in flight may or may not have been applied; the next
        run (or another instance) reconciles from what the server holds.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.reflector.run)
            await self._reconcile_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _reconcile_forever(self) -> NoReturn:
        retry = self._retry
        while True:
            await self._wake.wait()
            await self._settle()
            self._kick = trio.Event()
            if self._desired is None or not self.reflector.synced.is_set():
                continue
            delay = 0.0
            try:
                plan = await self._plan()
                if plan.empty:
                    self._generation = max(self._generation, plan.generation)
                    self._mark_in_sync()
                    retry.succeeded()
                    continue
                self._state = "syncing"
                log.info(
                    "publishing slices: generation %d, %d create, %d update, %d delete (%s)",
                    plan.generation,
                    len(plan.creates),
                    len(plan.updates),
                    len(plan.deletes),
                    "; ".join(plan.reasons[:4]),
                )
                await self._execute(plan)
                self._generation = max(self._generation, plan.generation)
                retry.succeeded()
                self._last_error = None
                self._unreachable = False
                self._wake.set()  # Confirm against the store: expect an empty plan.
            except (ConflictError, NotFoundError, AlreadyExistsError) as exc:
                # Our view is stale (someone changed or deleted slices meanwhile); the watch
                # is catching up. Retry soon, then back off if it keeps happening.
                self._last_error = str(exc)
                delay = retry.failed(
                    f"slice write raced with another change: {exc}",
                    level=logging.INFO,
                    schedule=self.race_backoff,
                )
            except InvalidError as exc:
                self._fail(exc)
                delay = retry.failed(exc, level=logging.ERROR, schedule=self.invalid_backoff)
            except (KubeApiError, InvalidValueError) as exc:
                self._fail(exc)
                delay = retry.failed(exc)
            if delay:
                with trio.move_on_after(delay):
                    await self._kick.wait()
                self._wake.set()

    async def _settle(self) -> None:
        """Wait until no change arrived for ``settle`` seconds (at most ``max_settle``).

        A DeleteCollection by the kubelet arrives as one DELETED event per slice over a few
        hundred milliseconds; planning in the middle would update slices about to vanish.
        """
        deadline = trio.current_time() + self.max_settle
        while True:
            self._wake = trio.Event()
            with trio.move_on_after(self.settle):
                await self._wake.wait()
            if not self._wake.is_set() or trio.current_time() >= deadline:
                self._wake = trio.Event()
                return

    def _fail(self, exc: Exception) -> None:
        self._state = "error"
        self._last_error = str(exc)
        self._unreachable = isinstance(exc, ApiUnreachableError)

    def _mark_in_sync(self) -> None:
        if self._state != "in-sync":
            log.info(
                "ResourceSlices in sync: %d slice(s), generation %d",
                len(self.reflector.store),
                self._generation,
            )
        self._state = "in-sync"
        self._last_error = None
        self._unreachable = False
        self._last_in_sync = time.time()
        self.in_sync.set()

    async def _refresh_owner(self) -> None:
        try:
            node = await self.client.get(NODES, self.node_name)
        except NotFoundError as exc:
            # Not a stale view of ours: without the Node there is no owner for new slices.
            raise KubeApiError(
                f"Node {self.node_name!r} not found (404); ResourceSlices need it as owner: {exc}"
            ) from exc
        uid = str(node.get("metadata", {}).get("uid", ""))
        if not uid:
            raise InvalidValueError("Node has no metadata.uid", value=node, origin="API server")
        if self._node_uid is not None and uid != self._node_uid:
            log.warning("Node %s was re-created (uid %s → %s)", self.node_name, self._node_uid, uid)
        self._node_uid = uid

    def _plan_now(self) -> SlicePlan:
        assert self._desired is not None
        plan = plan_slices(
            self._desired,
            list(self.reflector.store.values()),
            driver=self.driver,
            node=self.node_name,
            owner_uid=self._node_uid,
            labels=self.labels,
            min_generation=self._generation,
            stored_forms=self._stored_forms,
        )
        return plan

    async def _plan(self) -> SlicePlan:
        if self.owner_node and self._node_uid is None:
            await self._refresh_owner()
        plan = self._plan_now()
        if plan.creates and self.owner_node:
            # New slices get an owner reference: make sure the Node was not re-created.
            before = self._node_uid
            await self._refresh_owner()
            if self._node_uid != before:
                plan = self._plan_now()
        return plan

    async def _execute(self, plan: SlicePlan) -> None:
        async def delete(d: SliceDelete) -> None:
            await self.client.delete(
                RESOURCE_SLICES, d.name, uid=d.uid or None, resource_version=d.resource_version
            )
            self._counts["delete"] += 1
            self.reflector.forget({"metadata": {"name": d.name}})

        async def update(w: SliceWrite) -> None:
            try:
                stored = await self.client.update(RESOURCE_SLICES, w.body)
            except NotFoundError:
                self.reflector.forget(w.body)  # Deleted under us: plan a create next time.
                raise
            self._counts["update"] += 1
            self._stored(w.index, w.body, stored)

        async def create(w: SliceWrite) -> None:
            stored = await self.client.create(RESOURCE_SLICES, w.body)
            self._counts["create"] += 1
            self._stored(w.index, w.body, stored)

        # Phases in order (obsolete devices go first), each phase's calls in parallel.
        await self._all([partial(delete, d) for d in plan.deletes])
        await self._all([partial(update, w) for w in plan.updates])
        await self._all([partial(create, w) for w in plan.creates])

    async def _all(self, calls: list[Callable[[], Awaitable[None]]]) -> None:
        """Run ``calls`` with at most ``parallel_writes`` in flight; re-raise the first error.

        After a failure no further call starts; calls in flight finish.
        """
        errors: list[Exception] = []
        limit = trio.Semaphore(self.parallel_writes)

        async def one(call: Callable[[], Awaitable[None]]) -> None:
            async with limit:
                if errors:
                    return
                try:
                    await call()
                except (KubeApiError, InvalidValueError) as exc:
                    errors.append(exc)

        async with trio.open_nursery() as nursery:
            for call in calls:
                nursery.start_soon(one, call)
        if errors:
            raise errors[0]

    def _stored(self, index: int, sent: JSON, stored: JSON) -> None:
        self.reflector.remember(stored)
        sent_c = content(sent.get("spec") or {})
        stored_c = content(stored.get("spec") or {})
        if sent_c == stored_c:
            self._stored_forms.pop(index, None)
            self._dropped.pop(index, None)
            return
        dropped, changed = compare_content(sent_c, stored_c)
        self._stored_forms[index] = StoredForm(sent=sent_c, stored=stored_c)
        self._dropped[index] = tuple(dropped)
        gates = tuple(missing_gates(p for paths in self._dropped.values() for p in paths))
        if gates != self._reported_gates or not gates:
            self._reported_gates = gates
            shown = ", ".join(dropped[:3]) + (
                f" (+{len(dropped) - 3} more)" if len(dropped) > 3 else ""
            )
            name = stored.get("metadata", {}).get("name")
            if gates:
                log.warning(
                    "API server dropped ResourceSlice fields %s of %s: enable feature gate(s) %s "
                    "on kube-apiserver and kube-scheduler",
                    shown,
                    name,
                    ", ".join(gates),
                )
            else:
                log.warning(
                    "API server changed ResourceSlice %s on write: dropped %s, changed %s",
                    name,
                    shown or "nothing",
                    ", ".join(changed[:3]) or "nothing",
                )
