"""A small Kubernetes REST client on ``httpx.AsyncClient``, for trio.

JSON only. Each call is one logical request that may be retried inside the client:

* 429 TooManyRequests and 5xx answers, and transport failures (refused, reset, timeout), are
  retried up to ``RetryPolicy.attempts`` times with bounded exponential backoff and jitter; a
  ``Retry-After`` header is honoured (capped at ``RetryPolicy.max_retry_after``).
* 401 Unauthorized re-reads a rotating token file and retries once at once.
* every other error Status is raised at once as its typed class (:mod:`dracpu.kube.errors`).

Retries are logged by the one rule of :class:`dracpu.backoff.RetryLoop` (one loop per client: the
first failure at WARNING, repeats rate-limited, recovery at INFO).

Every body is untrusted: it is read up to a cap (``max_body_bytes``, 16 MiB; a watch line
``max_watch_line_bytes``, 4 MiB) and checked by :mod:`dracpu.kube.shape` before anyone reads a
field; a body over the cap or of the wrong shape raises
:class:`~dracpu.kube.errors.BadBodyError` (not retried here: the caller backs off).

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

from dracpu.backoff import Backoff, RetryLoop
from dracpu.errors import KubeApiError
from dracpu.kube.config import KubeConfig, TokenSource
from dracpu.kube.errors import (
    ApiStatusError,
    ApiUnreachableError,
    BadBodyError,
    BodyTooLargeError,
    NotFoundError,
    ServerError,
    TooManyRequestsError,
    UnauthorizedError,
    WatchProtocolError,
    status_error,
)
from dracpu.kube.resources import Resource
from dracpu.kube.shape import check_list, check_object, check_watch_event, decode_json

__all__ = ["JSON", "KubeClient", "ObjectList", "RetryPolicy", "WatchEvent"]

JSON = dict[str, Any]
log = logging.getLogger("dracpu.kube")

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_BODY_BYTES = 16 << 20
"""Default cap of one response body (a list page of 500 ResourceSlices is far below it)."""
MAX_WATCH_LINE_BYTES = 4 << 20
"""Default cap of one watch event line (etcd's default request limit is 1.5 MiB)."""


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


def _error_body(data: bytes, method: str, url: str) -> Any:
    """The decoded body of an error answer, or None when it is not usable JSON."""
    try:
        return decode_json(data, method=method, url=url)
    except BadBodyError:
        return None


async def _abandon(chunks: AsyncIterator[Any]) -> None:
    """Finish a half-read httpx body iterator without leaving its generators to the GC.

    httpx reads a body through a chain of async generators; one more pull inside an already
    cancelled scope reaches the socket read, raises Cancelled through every frame and leaves
    them finished (trio warns about generators collected while suspended).
    """
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            while True:
                await chunks.__anext__()
        except (StopAsyncIteration, httpx.HTTPError):
            pass


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
        max_body_bytes: int = MAX_BODY_BYTES,
        max_watch_line_bytes: int = MAX_WATCH_LINE_BYTES,
    ) -> None:
        self.config = config
        self.retry = retry or RetryPolicy()
        self.max_body_bytes = max_body_bytes
        self.max_watch_line_bytes = max_watch_line_bytes
        self.request_counts: Counter[str] = Counter()
        self._rng = rng or random.Random()
        self._retries = RetryLoop("Kubernetes API request", self.retry.backoff, log, rng=self._rng)
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
                sent = self._http.build_request(
                    method, path, params=params, content=content, headers=headers
                )
                response = await self._http.send(sent, stream=True)
                try:
                    data = await self._read_body(response, method, url)
                finally:
                    await response.aclose()
            except httpx.RequestError as exc:
                error = ApiUnreachableError(f"{type(exc).__name__}: {exc}", method=method, url=url)
                error.__cause__ = exc
            else:
                if response.status_code < 400:
                    self._retries.succeeded()
                    return decode_json(data, method=method, url=url) if data.strip() else None
                retry_after = _retry_after(response)
                error = status_error(
                    response.status_code,
                    _error_body(data, method, url),
                    method=method,
                    url=url,
                    retry_after=retry_after,
                    fallback_message=data[:200].decode("utf-8", "replace"),
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
            self._retries.failed(error, delay=delay)
            await trio.sleep(delay)

    async def _read_body(self, response: httpx.Response, method: str, url: str) -> bytes:
        """Read a streamed body of at most ``max_body_bytes``; BodyTooLargeError beyond.

        The cap applies to the decoded bytes, so a compressed bomb stops at the cap too.
        """
        limit = self.max_body_bytes
        declared = response.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            raise BodyTooLargeError(
                limit=limit, what=f"body of {declared} bytes", method=method, url=url
            )
        buf = bytearray()
        chunks = response.aiter_bytes()
        async for chunk in chunks:
            buf += chunk
            if len(buf) > limit:
                await _abandon(chunks)
                raise BodyTooLargeError(limit=limit, what="body", method=method, url=url)
        return bytes(buf)

    async def _object(self, method: str, path: str, **kwargs: Any) -> JSON:
        """One request whose answer must be a named API object (checked by the shape rules)."""
        data = await self.request(method, path, **kwargs)
        return check_object(data, method=method, url=f"{self.config.server}{path}", named=True)

    # --- typed verbs ------------------------------------------------------------------------

    async def get(self, resource: Resource, name: str, *, namespace: str | None = None) -> JSON:
        """GET one object. Raises NotFoundError if absent. Cancellation: nothing to undo."""
        return await self._object("GET", resource.path(namespace=namespace, name=name))

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
                    raw = await self.request("GET", path, params=params)
                except ApiStatusError as exc:
                    if exc.code == 410 and "continue" in params:
                        break
                    raise
                page = check_list(raw, method="GET", url=f"{self.config.server}{path}")
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
        return await self._object("POST", resource.path(namespace=namespace), body=obj)

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
        return await self._object("PUT", path, body=obj)

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
        return await self._object("PATCH", path, body=patch, content_type=patch_type)

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
                    data = await self._read_body(response, "WATCH", url)
                    error = status_error(
                        response.status_code,
                        _error_body(data, "WATCH", url),
                        method="WATCH",
                        url=url,
                        retry_after=_retry_after(response),
                        fallback_message=data[:200].decode("utf-8", "replace"),
                    )
                    if isinstance(error, UnauthorizedError) and self._tokens is not None:
                        self._tokens.invalidate()
                    raise error
                events = _WatchStream(response, url, self.max_watch_line_bytes)
                try:
                    yield events
                finally:
                    await events.aclose()
        except httpx.RequestError as exc:
            raise ApiUnreachableError(
                f"{type(exc).__name__}: {exc}", method="WATCH", url=url
            ) from exc


class _WatchStream:
    """Async iterator of watch events over the newline-delimited body of a streaming response.

    Lines are split here, not by httpx, so one line is never buffered beyond ``max_line``
    bytes: a longer one raises BodyTooLargeError before more is read. Each line goes through
    :func:`dracpu.kube.shape.check_watch_event`. :meth:`aclose` (and every error raised here)
    finishes httpx's generator chain inside a cancelled scope (see :func:`_abandon`).
    """

    def __init__(self, response: httpx.Response, url: str, max_line: int) -> None:
        self._chunks = response.aiter_bytes()
        self._url = url
        self._max_line = max_line
        self._buf = bytearray()
        self._eof = False
        self._done = False

    def __aiter__(self) -> _WatchStream:
        return self

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        if not self._eof:
            await _abandon(self._chunks)

    async def _fail(self, error: Exception) -> NoReturn:
        await self.aclose()
        raise error

    async def _line(self) -> bytes | None:
        """The next line (without its newline), or None at the end of the stream."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                if len(line) > self._max_line:
                    break
                return line
            if len(self._buf) > self._max_line:
                break
            if self._eof:
                line, self._buf = bytes(self._buf), bytearray()
                return line or None
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._eof = True
                continue
            except httpx.RequestError as exc:
                self._eof = self._done = True
                raise ApiUnreachableError(
                    f"{type(exc).__name__}: {exc}", method="WATCH", url=self._url
                ) from exc
            except BaseException:
                self._eof = self._done = True
                raise
            self._buf += chunk
        await self._fail(
            BodyTooLargeError(
                limit=self._max_line, what="watch event line", method="WATCH", url=self._url
            )
        )

    async def __anext__(self) -> WatchEvent:
        while True:
            if self._done:
                raise StopAsyncIteration
            line = await self._line()
            if line is None:
                self._done = True
                raise StopAsyncIteration
            if line.strip():
                break
        url = self._url
        text = line[:200].decode("utf-8", "replace")
        try:
            raw = check_watch_event(decode_json(line, method="WATCH", url=url), url=url)
        except BadBodyError as exc:
            await self._fail(exc)
        if "type" not in raw or "object" not in raw:
            await self._fail(WatchProtocolError("not a watch event", line=text, url=url))
        kind = raw["type"]
        obj: JSON = raw["object"]
        if kind == "ERROR":
            code = obj.get("code")
            await self._fail(
                status_error(code if isinstance(code, int) else 500, obj, method="WATCH", url=url)
            )
        if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            await self._fail(WatchProtocolError(f"unknown event type {kind!r}", line=text, url=url))
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
