"""Keep a local copy of a set of API objects current: list once, then watch, forever.

:class:`Reflector` is a small informer. It lists the objects (all pages), then watches from the
list's resourceVersion with bookmarks on; it resumes a watch that ends or drops from the last
resourceVersion it saw, lists again on ``410 Gone`` (as an HTTP answer or an ``ERROR`` event), and
waits with bounded exponential backoff and jitter after failures, so a dead API server costs a
few requests a minute, not a tight loop. A watch that ends within ``min_watch_lifetime`` is such
a failure whatever it delivered (counted in :meth:`Reflector.health`), so a proxy that closes
every stream after one event cannot make it spin. After three failed resumes in a row it lists
afresh, in case the server no longer knows the resourceVersion (its etcd was replaced or
restored); only a watch that delivers events and lives the minimum lifetime resets the backoff.
Its :attr:`Reflector.store` maps ``namespace/name`` to the newest object, without its
``metadata.managedFields``; ``on_change`` is called after every change so owners can react.

Writers that have just stored an object can put the server's answer into the store at once with
:meth:`Reflector.remember` (like client-go's mutation cache) so they do not act on an older copy
before its watch event arrives; events older than a remembered object are ignored.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import trio

from dracpu.backoff import Backoff, RetryLoop
from dracpu.errors import KubeApiError
from dracpu.kube.client import JSON, KubeClient
from dracpu.kube.errors import ApiStatusError, GoneError
from dracpu.kube.resources import Resource

__all__ = ["Change", "Reflector", "ReflectorHealth", "object_key", "without_managed_fields"]

MIN_WATCH_LIFETIME = 1.0
"""A watch that ends sooner than this (seconds) counts as a failure and is retried with backoff."""

log = logging.getLogger("dracpu.kube.watch")


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects)."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def without_managed_fields(obj: JSON) -> JSON:
    """``obj`` without ``metadata.managedFields`` (a shallow copy; ``obj`` is not changed).

    Nothing here reads them, and on a claim they are often larger than the rest of it; client-go
    informers drop them the same way (``TransformStripManagedFields``). An update sent from such a
    copy leaves the server's managed fields as they are.
    """
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


def _rv_int(obj: Mapping[str, Any] | None) -> int | None:
    if obj is None:
        return None
    raw = (obj.get("metadata") or {}).get("resourceVersion")
    if not isinstance(raw, str):
        return None
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Change:
    """What changed: ``kind`` is "RELISTED", "ADDED", "MODIFIED" or "DELETED"."""

    kind: str
    key: str = ""
    object: JSON | None = None


@dataclass(frozen=True, slots=True)
class ReflectorHealth:
    """A snapshot of one reflector: ``early_watch_ends`` counts watches that ended before the
    minimum lifetime, ``failures`` the current failure streak (0 when working)."""

    synced: bool
    healthy: bool
    last_error: str | None
    lists: int
    watches: int
    early_watch_ends: int
    failures: int


class Reflector:
    """List + watch one resource (optionally filtered) into :attr:`store`.

    ``keep`` filters objects client-side (objects it rejects are treated as absent);
    ``on_change`` is called synchronously after each change is applied. :attr:`synced` is set
    after the first successful list; :attr:`healthy` tells whether the last list/watch worked and
    :attr:`last_error` holds the last failure text.
    """

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        *,
        namespace: str | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
        keep: Callable[[JSON], bool] | None = None,
        on_change: Callable[[Change], None] | None = None,
        backoff: Backoff | None = None,
        watch_timeout: int = 300,
        min_watch_lifetime: float = MIN_WATCH_LIFETIME,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.keep = keep
        self.on_change = on_change
        self.backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self.watch_timeout = watch_timeout
        self.store: dict[str, JSON] = {}
        self.resource_version = ""
        self.synced = trio.Event()
        self.healthy = False
        self.last_error: str | None = None
        self.lists = 0
        self.watches = 0
        self.early_watch_ends = 0
        self.min_watch_lifetime = min_watch_lifetime
        self._rng = rng or random.Random()
        self._retry = RetryLoop(f"{resource.plural} list/watch", self.backoff, log, rng=self._rng)

    # --- store --------------------------------------------------------------------------------

    def _notify(self, change: Change) -> None:
        if self.on_change is not None:
            self.on_change(change)

    def _apply(self, kind: str, obj: JSON) -> None:
        obj = without_managed_fields(obj)
        key = object_key(obj)
        if kind == "DELETED" or (self.keep is not None and not self.keep(obj)):
            if self.store.pop(key, None) is not None:
                self._notify(Change("DELETED", key, obj))
            return
        old = self.store.get(key)
        old_rv, new_rv = _rv_int(old), _rv_int(obj)
        if old is not None and old_rv is not None and new_rv is not None and new_rv <= old_rv:
            return  # Not newer than what we hold (our own write, remembered earlier).
        self.store[key] = obj
        self._notify(Change("ADDED" if old is None else "MODIFIED", key, obj))

    def remember(self, obj: JSON) -> None:
        """Put an object the caller just wrote (the server's answer) into the store."""
        self._apply("MODIFIED", obj)

    def forget(self, obj: JSON) -> None:
        """Drop an object the caller just deleted from the store."""
        self._apply("DELETED", obj)

    def _replace(self, items: list[JSON]) -> None:
        fresh = {}
        for item in items:
            if self.keep is None or self.keep(item):
                fresh[object_key(item)] = without_managed_fields(item)
        self.store = fresh
        self._notify(Change("RELISTED"))

    # --- loop ---------------------------------------------------------------------------------

    def health(self) -> ReflectorHealth:
        """A snapshot of the loop's state (cheap; no I/O)."""
        return ReflectorHealth(
            synced=self.synced.is_set(),
            healthy=self.healthy,
            last_error=self.last_error,
            lists=self.lists,
            watches=self.watches,
            early_watch_ends=self.early_watch_ends,
            failures=self._retry.failures,
        )

    async def run(self) -> NoReturn:
        """List and watch until cancelled; never returns and never raises KubeApiError.

        Failures are logged (the rule of :class:`~dracpu.backoff.RetryLoop`), recorded in
        :attr:`last_error`, and retried with backoff. A watch that ends before
        ``min_watch_lifetime`` counts as a failure whatever it delivered (a proxy closing every
        stream must not turn into a request storm). Cancellation: stops at once; the store keeps
        its last contents.
        """
        retry = self._retry
        need_list = True
        while True:
            delay = 0.0
            try:
                if need_list:
                    listed = await self.client.list(
                        self.resource,
                        namespace=self.namespace,
                        field_selector=self.field_selector,
                        label_selector=self.label_selector,
                    )
                    self.lists += 1
                    self.resource_version = listed.resource_version
                    self._replace(listed.items)
                    need_list = False
                    self.healthy, self.last_error = True, None
                    self.synced.set()
                opened = trio.current_time()
                events = await self._watch_once()
                lifetime = trio.current_time() - opened
                if lifetime < self.min_watch_lifetime:
                    # Ended early: a proxy or load balancer cutting streams, or a server in
                    # trouble. Back off whatever it delivered; without events it may also not
                    # know our resourceVersion, so the relist rule below applies.
                    self.early_watch_ends += 1
                    text = (
                        f"watch ended after {lifetime:.3f} s with {events} event(s) "
                        f"(minimum lifetime {self.min_watch_lifetime} s)"
                    )
                    self.healthy, self.last_error = False, text
                    delay = retry.failed(f"{self.resource.plural} {text}")
                    if events == 0 and retry.failures >= 3:
                        need_list = True
                elif events:
                    retry.succeeded()
                    continue
                else:
                    # The stream closed without a single event: normal after a server timeout, but
                    # if it keeps happening the server is unhealthy; do not spin, and list again
                    # (our resourceVersion may mean nothing to it, e.g. after an etcd restore).
                    text = f"{self.resource.plural} watch ended without events"
                    if retry.failures < 2:
                        retry.failed(text, retry_now=True)
                        continue
                    delay = retry.failed(text)
                    need_list = True
            except GoneError as exc:
                log.info("%s: %s; listing again", self.resource.plural, exc)
                need_list = True
                if retry.failures < 1:
                    retry.failed(exc, retry_now=True)
                    continue
                delay = retry.failed(exc)
            except KubeApiError as exc:
                self.healthy, self.last_error = False, str(exc)
                delay = retry.failed(f"{self.resource.plural} list/watch: {exc}")
                if retry.failures >= 3 or (
                    isinstance(exc, ApiStatusError) and exc.code in (400, 403, 404)
                ):
                    # Resuming keeps failing: the resourceVersion may be unknown to the server
                    # (its etcd was replaced: "too large resource version"); list afresh.
                    need_list = True
            await trio.sleep(delay)

    async def _watch_once(self) -> int:
        """One watch request; returns how many events (bookmarks included) arrived."""
        got = 0
        self.watches += 1
        async with self.client.watch(
            self.resource,
            resource_version=self.resource_version,
            namespace=self.namespace,
            field_selector=self.field_selector,
            label_selector=self.label_selector,
            timeout_seconds=self.watch_timeout + self._rng.randrange(0, 60),
        ) as events:
            async for event in events:
                got += 1
                self.healthy, self.last_error = True, None
                if event.resource_version:
                    self.resource_version = event.resource_version
                if event.type != "BOOKMARK":
                    self._apply(event.type, event.object)
        return got
