"""A small Kubernetes REST client on ``httpx.AsyncClient``, for trio.

JSON only. Each call is one logical request that may be retried inside the client:

* 429 TooManyRequests and 5xx answers, and transport failures (refused, reset, timeout), are
  retried up to ``RetryPolicy.attempts`` times with bounded exponential backoff and jitter; a
  ``Retry-After`` header is honoured (capped at ``RetryPolicy.max_retry_after``).
* 401 Unauthorized re-reads a rotating token file and retries once at once.
* every other error Status is raised at once as its typed class (:mod:`dracpu.kube.errors`).

Watches are not retried here: :meth:`KubeClient.watch` yields events until the stream ends or
fails, and :class:`dracpu.kube.watch.Reflector` decides how to resume.

The HTTP transport is injectable, so tests run the client against an in-process fake server
(``httpx.MockTransport``) and against a real kube-apiserver with the same code.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn

import httpx
import trio

from dracpu.backoff import Backoff
from dracpu.errors import KubeApiError
from dracpu.kube.config import KubeConfig, TokenSource
from dracpu.kube.errors import (
    ApiStatusError,
    ApiUnreachableError,
    NotFoundError,
    ServerError,
    TooManyRequestsError,
    UnauthorizedError,
    WatchProtocolError,
    status_error,
)
from dracpu.kube.resources import Resource

__all__ = ["JSON", "KubeClient", "ObjectList", "RetryPolicy", "WatchEvent"]

JSON = dict[str, Any]
log = logging.getLogger("dracpu.kube")

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long the client retries one request (see the module docstring)."""

    attempts: int = 5
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.2, maximum=10.0))
    max_retry_after: float = 30.0


@dataclass(frozen=True, slots=True)
class ObjectList:
    """A complete (all pages) list: the items and the list's resourceVersion."""

    items: list[JSON]
    resource_version: str


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One watch event: ``type`` is ADDED, MODIFIED, DELETED or BOOKMARK; ``object`` the object."""

    type: str
    object: JSON

    @property
    def resource_version(self) -> str:
        """The event object's ``metadata.resourceVersion`` ("" if absent)."""
        return str(self.object.get("metadata", {}).get("resourceVersion", ""))


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    date = response.headers.get("Date")
    try:
        now = parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError):
        now = None
    if now is None:
        return None
    return max(0.0, (when - now).total_seconds())


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


class KubeClient:
    """Async Kubernetes REST client; use as ``async with KubeClient(config) as client``.

    ``transport`` replaces the network (tests); ``rng`` seeds the retry jitter. ``request_counts``
    counts HTTP requests sent per method (retries included), so callers can assert "no writes".
    """

    def __init__(
        self,
        config: KubeConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        rng: random.Random | None = None,
        user_agent: str = "dracpu",
    ) -> None:
        self.config = config
        self.retry = retry or RetryPolicy()
        self.request_counts: Counter[str] = Counter()
        self._rng = rng or random.Random()
        self._tokens: TokenSource | None = config.token_source()
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=config.server,
            verify=config.ssl_context() if transport is None else True,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={"Accept": "application/json", "User-Agent": user_agent},
            follow_redirects=False,
        )

    @property
    def writes(self) -> int:
        """HTTP write requests (POST/PUT/PATCH/DELETE) sent so far, retries included."""
        return sum(n for m, n in self.request_counts.items() if m in _WRITE_METHODS)

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. Cancellation: closes what it can, then propagates."""
        await self._http.aclose()

    # --- plumbing -------------------------------------------------------------------------

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._tokens is not None:
            headers["Authorization"] = f"Bearer {self._tokens.get()}"
        if content_type is not None:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """Send one request with the retry rules of the module docstring; return parsed JSON.

        Raises the typed :class:`ApiStatusError` subclass or :class:`ApiUnreachableError` once
        retries are exhausted. Cancellation: propagates at once; a write may or may not have
        reached the server.
        """
        url = f"{self.config.server}{path}"
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        attempt = 0
        reauthed = False
        while True:
            error: KubeApiError
            retry_after: float | None = None
            try:
                headers = self._headers(content_type if content is not None else None)
                self.request_counts[method] += 1
                response = await self._http.request(
                    method, path, params=params, content=content, headers=headers
                )
            except httpx.RequestError as exc:
                error = ApiUnreachableError(f"{type(exc).__name__}: {exc}", method=method, url=url)
                error.__cause__ = exc
            else:
                if response.status_code < 400:
                    data = _body(response)
                    if data is None and response.content:
                        raise ServerError(
                            code=response.status_code,
                            reason="InvalidBody",
                            message="response body is not JSON",
                            method=method,
                            url=url,
                        )
                    return data
                retry_after = _retry_after(response)
                error = status_error(
                    response.status_code,
                    _body(response),
                    method=method,
                    url=url,
                    retry_after=retry_after,
                    fallback_message=response.text[:200],
                )
                if (
                    isinstance(error, UnauthorizedError)
                    and not reauthed
                    and self._tokens is not None
                    and self._tokens.path is not None
                ):
                    reauthed = True
                    self._tokens.invalidate()
                    log.info("%s %s: 401, re-reading token %s", method, url, self._tokens.path)
                    continue
            if not isinstance(error, ApiUnreachableError | TooManyRequestsError | ServerError):
                raise error
            attempt += 1
            if attempt >= self.retry.attempts:
                raise error
            delay = self.retry.backoff.delay(attempt - 1, self._rng)
            if retry_after is not None:
                delay = min(max(retry_after, 0.0), self.retry.max_retry_after)
            log.debug("%s; retry %d in %.2fs", error, attempt, delay)
            await trio.sleep(delay)

    # --- typed verbs ------------------------------------------------------------------------

    async def get(self, resource: Resource, name: str, *, namespace: str | None = None) -> JSON:
        """GET one object. Raises NotFoundError if absent. Cancellation: nothing to undo."""
        data: JSON = await self.request("GET", resource.path(namespace=namespace, name=name))
        return data

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
        page_size: int = 500,
    ) -> ObjectList:
        """List all objects (following ``continue`` pages); a fresh, consistent read.

        If a continue token expires mid-way (410) the list starts over. Cancellation: nothing
        to undo.
        """
        path = resource.path(namespace=namespace)
        for _restart in range(3):
            items: list[JSON] = []
            params = {"limit": str(page_size)}
            if field_selector:
                params["fieldSelector"] = field_selector
            if label_selector:
                params["labelSelector"] = label_selector
            while True:
                try:
                    page: JSON = await self.request("GET", path, params=params)
                except ApiStatusError as exc:
                    if exc.code == 410 and "continue" in params:
                        break
                    raise
                items.extend(page.get("items") or [])
                meta = page.get("metadata") or {}
                token = meta.get("continue")
                if not token:
                    return ObjectList(items, str(meta.get("resourceVersion", "")))
                params["continue"] = token
        raise ServerError(
            code=410,
            reason="Expired",
            message="list continue token kept expiring",
            method="GET",
            url=path,
        )

    async def create(
        self, resource: Resource, obj: Mapping[str, Any], *, namespace: str | None = None
    ) -> JSON:
        """POST a new object; returns it as stored. Cancellation: it may have been created."""
        data: JSON = await self.request("POST", resource.path(namespace=namespace), body=obj)
        return data

    async def update(
        self,
        resource: Resource,
        obj: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str = "",
    ) -> JSON:
        """PUT an object (``metadata.resourceVersion`` makes it conditional: 409 if stale).

        ``subresource="status"`` writes the status. Cancellation: it may have been applied.
        """
        name = str(obj.get("metadata", {}).get("name", ""))
        path = resource.path(namespace=namespace, name=name, subresource=subresource)
        data: JSON = await self.request("PUT", path, body=obj)
        return data

    async def update_status(
        self, resource: Resource, obj: Mapping[str, Any], *, namespace: str | None = None
    ) -> JSON:
        """PUT the ``status`` subresource. Cancellation: it may have been applied."""
        return await self.update(resource, obj, namespace=namespace, subresource="status")

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Mapping[str, Any] | Sequence[Any],
        *,
        namespace: str | None = None,
        subresource: str = "",
        patch_type: str = "application/merge-patch+json",
    ) -> JSON:
        """PATCH an object (JSON merge patch by default). Cancellation: may have been applied."""
        path = resource.path(namespace=namespace, name=name, subresource=subresource)
        data: JSON = await self.request("PATCH", path, body=patch, content_type=patch_type)
        return data

    async def patch_if_needed(
        self,
        resource: Resource,
        name: str,
        patch: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str = "",
    ) -> tuple[JSON, bool]:
        """Apply a JSON merge patch only if it would change the object; returns (obj, patched).

        Reads the object first; if merging ``patch`` into it changes nothing, no write is sent.
        The write carries the read ``resourceVersion``, so a concurrent change gives
        ConflictError. Cancellation: the patch may have been applied.
        """
        current = await self.get(resource, name, namespace=namespace)
        if merge_patch(current, patch) == current:
            return current, False
        guarded = dict(patch)
        meta = dict(guarded.get("metadata") or {})
        meta["resourceVersion"] = current.get("metadata", {}).get("resourceVersion")
        guarded["metadata"] = meta
        updated = await self.patch(
            resource, name, guarded, namespace=namespace, subresource=subresource
        )
        return updated, True

    async def delete(
        self,
        resource: Resource,
        name: str,
        *,
        namespace: str | None = None,
        uid: str | None = None,
        resource_version: str | None = None,
    ) -> bool:
        """DELETE an object, optionally only if its uid/resourceVersion still match (else 409).

        Returns False if it was already gone (404). Cancellation: it may have been deleted.
        """
        body: JSON = {"apiVersion": "v1", "kind": "DeleteOptions"}
        preconditions = {}
        if uid:
            preconditions["uid"] = uid
        if resource_version:
            preconditions["resourceVersion"] = resource_version
        if preconditions:
            body["preconditions"] = preconditions
        try:
            await self.request("DELETE", resource.path(namespace=namespace, name=name), body=body)
        except NotFoundError:
            return False
        return True

    async def delete_collection(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
    ) -> None:
        """DELETE every matching object (what the kubelet does to a node's slices).

        Cancellation: some, all or none may have been deleted.
        """
        params = {}
        if field_selector:
            params["fieldSelector"] = field_selector
        if label_selector:
            params["labelSelector"] = label_selector
        await self.request("DELETE", resource.path(namespace=namespace), params=params)

    @asynccontextmanager
    async def watch(
        self,
        resource: Resource,
        *,
        resource_version: str,
        namespace: str | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
        bookmarks: bool = True,
    ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        """Open a watch from ``resource_version``; yields an async iterator of events.

        The iterator ends when the server closes the stream (its timeout); it raises GoneError
        for a 410 (as an HTTP answer or an ERROR event: list again), another ApiStatusError for
        other ERROR events, ApiUnreachableError when the connection drops, WatchProtocolError for
        a line that is not an event. Not retried. Cancellation: closes the stream.
        """
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_seconds),
        }
        if bookmarks:
            params["allowWatchBookmarks"] = "true"
        if field_selector:
            params["fieldSelector"] = field_selector
        if label_selector:
            params["labelSelector"] = label_selector
        path = resource.path(namespace=namespace)
        url = f"{self.config.server}{path}"
        timeout = httpx.Timeout(self._timeout, read=timeout_seconds + 30.0)
        self.request_counts["WATCH"] += 1
        try:
            async with self._http.stream(
                "GET", path, params=params, headers=self._headers(None), timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    error = status_error(
                        response.status_code,
                        _body(response),
                        method="WATCH",
                        url=url,
                        retry_after=_retry_after(response),
                        fallback_message=response.text[:200],
                    )
                    if isinstance(error, UnauthorizedError) and self._tokens is not None:
                        self._tokens.invalidate()
                    raise error
                events = _WatchStream(response, url)
                try:
                    yield events
                finally:
                    await events.aclose()
        except httpx.RequestError as exc:
            raise ApiUnreachableError(
                f"{type(exc).__name__}: {exc}", method="WATCH", url=url
            ) from exc


class _WatchStream:
    """Async iterator of watch events over the lines of a streaming response.

    httpx reads a body through a chain of async generators; stopping between two items would
    leave them to the garbage collector (trio warns about that). So instead of abandoning the
    chain, :meth:`aclose` (and every error raised here) pulls once more inside an already
    cancelled scope: the pull reaches the socket read, raises Cancelled through every generator
    frame and leaves them finished.
    """

    def __init__(self, response: httpx.Response, url: str) -> None:
        self._lines = response.aiter_lines()
        self._url = url
        self._done = False

    def __aiter__(self) -> _WatchStream:
        return self

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                while True:
                    await self._lines.__anext__()
            except (StopAsyncIteration, httpx.HTTPError):
                pass

    async def _fail(self, error: Exception) -> NoReturn:
        await self.aclose()
        raise error

    async def __anext__(self) -> WatchEvent:
        while True:
            if self._done:
                raise StopAsyncIteration
            try:
                line = await self._lines.__anext__()
            except StopAsyncIteration:
                self._done = True
                raise
            except httpx.RequestError as exc:
                self._done = True
                raise ApiUnreachableError(
                    f"{type(exc).__name__}: {exc}", method="WATCH", url=self._url
                ) from exc
            except BaseException:
                self._done = True
                raise
            if line.strip():
                break
        url = self._url
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            err = WatchProtocolError("not JSON", line=line, url=url)
            err.__cause__ = exc
            await self._fail(err)
        if not isinstance(raw, dict) or not isinstance(raw.get("object"), dict):
            await self._fail(WatchProtocolError("not a watch event", line=line, url=url))
        kind = raw.get("type")
        obj: JSON = raw["object"]
        if kind == "ERROR":
            code = obj.get("code")
            await self._fail(
                status_error(code if isinstance(code, int) else 500, obj, method="WATCH", url=url)
            )
        if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            await self._fail(WatchProtocolError(f"unknown event type {kind!r}", line=line, url=url))
        return WatchEvent(str(kind), obj)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of ``patch`` onto ``target`` (a new value; inputs untouched)."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
