"""An in-process fake kube-apiserver behind ``httpx.MockTransport``, for error-path tests.

It keeps objects in memory with a global resourceVersion counter and serves get, list (field
selectors ``metadata.name``, ``spec.nodeName``, ``spec.driver``), create (``generateName``),
update (optimistic concurrency), delete (preconditions), deletecollection and watch
(newline-delimited events, bookmarks, resume from a resourceVersion, 410 for compacted ones).

Faults a real server will not produce on demand are injected explicitly: canned error answers
(429 with Retry-After, 5xx bursts), cutting every open watch mid-stream, expiring watches with an
``ERROR`` 410 event, compaction, dropping fields on write (a feature gate that is off), a
required bearer token (rotation), and being down (every request fails to connect).

It is a test double for fast error-path tests only; the real kube-apiserver tests in
tests/e2e/test_kube_*.py cover the same client against the real thing.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import trio

JSON = dict[str, Any]

_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
)


def status(code: int, reason: str, message: str, causes: list[JSON] | None = None) -> JSON:
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if causes:
        body["details"] = {"causes": causes}
    return body


@dataclass
class Fault:
    """Answer matching requests with ``code``/``body``/``headers`` the next ``times`` times."""

    code: int
    method: str | None = None
    path_contains: str = ""
    watch: bool | None = None
    times: int = 1
    body: JSON | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    def matches(self, method: str, path: str, is_watch: bool) -> bool:
        return (
            self.times > 0
            and (self.method is None or self.method == method)
            and self.path_contains in path
            and (self.watch is None or self.watch == is_watch)
        )


class _WatchStream(httpx.AsyncByteStream):
    def __init__(self, receive: trio.MemoryReceiveChannel[bytes | Exception]) -> None:
        self._receive = receive

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for item in self._receive:
            if isinstance(item, Exception):
                raise item
            yield item

    async def aclose(self) -> None:
        await self._receive.aclose()


@dataclass
class _Watcher:
    plural: str
    selector: dict[str, str]
    namespace: str | None
    send: trio.MemorySendChannel[bytes | Exception]


class FakeApiServer:
    """The fake server; ``transport`` is what a KubeClient is given."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, JSON]] = {}
        self.rv = 100
        self.log: list[tuple[int, str, str, JSON]] = []  # (rv, plural, type, obj)
        self.compacted_rv = 0
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.required_token: str | None = None
        self.down = False
        self.drop_on_write: set[str] = set()  # device fields the "server" drops
        self.watchers: list[_Watcher] = []
        self._names = itertools.count()
        self.transport = httpx.MockTransport(self._handle)

    # --- test helpers -----------------------------------------------------------------------

    def put_object(self, plural: str, obj: JSON) -> JSON:
        """Store an object directly (as another client would), emitting ADDED/MODIFIED."""
        obj = copy.deepcopy(obj)
        key = self._key(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._names)}")
        kind = "MODIFIED" if key in self.objects.get(plural, {}) else "ADDED"
        self._commit(plural, kind, obj)
        return obj

    def remove_object(self, plural: str, key: str) -> None:
        obj = self.objects.get(plural, {}).get(key)
        if obj is not None:
            self._commit(plural, "DELETED", obj)

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _ in self.requests if m in ("POST", "PUT", "PATCH", "DELETE")]

    def cut_watches(self) -> None:
        """Drop every open watch connection mid-stream."""
        for w in self.watchers:
            w.send.send_nowait(httpx.ReadError("connection reset by fake server"))
        self.watchers.clear()

    def expire_watches(self) -> None:
        """Send every open watch an ERROR 410 event and compact history."""
        self.compacted_rv = self.rv
        line = json.dumps({"type": "ERROR", "object": status(410, "Expired", "too old")})
        for w in self.watchers:
            w.send.send_nowait((line + "\n").encode())
            w.send.close()
        self.watchers.clear()

    def bookmark(self) -> None:
        for w in self.watchers:
            obj = {"kind": "Bookmark", "metadata": {"resourceVersion": str(self.rv)}}
            w.send.send_nowait((json.dumps({"type": "BOOKMARK", "object": obj}) + "\n").encode())

    # --- internals --------------------------------------------------------------------------

    @staticmethod
    def _key(obj: JSON) -> str:
        meta = obj.get("metadata", {})
        ns = meta.get("namespace")
        return f"{ns}/{meta['name']}" if ns else str(meta["name"])

    @staticmethod
    def _fields(obj: JSON) -> dict[str, str]:
        spec = obj.get("spec") or {}
        return {
            "metadata.name": str(obj.get("metadata", {}).get("name", "")),
            "spec.nodeName": str(spec.get("nodeName", "")),
            "spec.driver": str(spec.get("driver", "")),
        }

    def _selected(self, obj: JSON, selector: dict[str, str], namespace: str | None) -> bool:
        if namespace is not None and obj.get("metadata", {}).get("namespace") != namespace:
            return False
        fields = self._fields(obj)
        return all(fields.get(k) == v for k, v in selector.items())

    def _commit(self, plural: str, kind: str, obj: JSON) -> None:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        store = self.objects.setdefault(plural, {})
        if kind == "DELETED":
            store.pop(self._key(obj), None)
        else:
            store[self._key(obj)] = obj
        self.log.append((self.rv, plural, kind, obj))
        line = (json.dumps({"type": kind, "object": obj}) + "\n").encode()
        for w in list(self.watchers):
            if w.plural == plural and self._selected(obj, w.selector, w.namespace):
                try:
                    w.send.send_nowait(line)
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    self.watchers.remove(w)

    def _drop_fields(self, obj: JSON) -> None:
        for dev in (obj.get("spec") or {}).get("devices") or []:
            for f in self.drop_on_write:
                dev.pop(f, None)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        params = {k: v[-1] for k, v in parse_qs(request.url.query.decode()).items()}
        method = request.method
        is_watch = params.get("watch") == "true"
        self.requests.append((method, path, params))
        if self.down:
            raise httpx.ConnectError("connection refused (fake server is down)", request=request)
        if self.required_token is not None and (
            request.headers.get("Authorization") != f"Bearer {self.required_token}"
        ):
            return httpx.Response(401, json=status(401, "Unauthorized", "Unauthorized"))
        for fault in self.faults:
            if fault.matches(method, path, is_watch):
                fault.times -= 1
                fault.hits += 1
                body = fault.body or status(fault.code, "Fault", f"injected {fault.code}")
                return httpx.Response(fault.code, json=body, headers=fault.headers)
        m = _PATH.match(path)
        if m is None:
            return httpx.Response(404, json=status(404, "NotFound", f"no route {path}"))
        plural, name, ns, sub = m["plural"], m["name"], m["ns"], m["sub"]
        store = self.objects.setdefault(plural, {})
        key = f"{ns}/{name}" if ns else name
        body = json.loads(request.content) if request.content else None
        selector = {}
        if params.get("fieldSelector"):
            selector = dict(kv.split("=", 1) for kv in params["fieldSelector"].split(","))
        if method == "GET" and name is None and is_watch:
            return self._watch(plural, selector, ns, params)
        if method == "GET" and name is None:
            items = [o for o in store.values() if self._selected(o, selector, ns)]
            return httpx.Response(
                200,
                json={
                    "kind": "List",
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": items,
                },
            )
        if method == "GET":
            if key not in store:
                return httpx.Response(404, json=status(404, "NotFound", f'"{name}" not found'))
            return httpx.Response(200, json=store[key])
        if method == "POST":
            assert body is not None
            meta = body.setdefault("metadata", {})
            if ns:
                meta["namespace"] = ns
            if not meta.get("name"):
                meta["name"] = f"{meta['generateName']}{next(self._names):05d}"
            if self._key(body) in store:
                return httpx.Response(409, json=status(409, "AlreadyExists", "exists"))
            meta["uid"] = f"uid-{next(self._names)}"
            self._drop_fields(body)
            self._commit(plural, "ADDED", body)
            return httpx.Response(201, json=store[self._key(body)])
        if method == "PUT":
            assert body is not None
            if key not in store:
                return httpx.Response(404, json=status(404, "NotFound", f'"{name}" not found'))
            current = store[key]
            want_rv = body.get("metadata", {}).get("resourceVersion")
            if want_rv and want_rv != current["metadata"]["resourceVersion"]:
                return httpx.Response(409, json=status(409, "Conflict", "modified"))
            body["metadata"]["uid"] = current["metadata"]["uid"]
            if sub == "status":
                new = copy.deepcopy(current)
                new["status"] = body.get("status")
                body = new
            self._drop_fields(body)
            self._commit(plural, "MODIFIED", body)
            return httpx.Response(200, json=store[key])
        if method == "DELETE" and name is None:
            for obj in [o for o in store.values() if self._selected(o, selector, ns)]:
                self._commit(plural, "DELETED", obj)
            return httpx.Response(200, json={"kind": "Status", "status": "Success"})
        if method == "DELETE":
            if key not in store:
                return httpx.Response(404, json=status(404, "NotFound", f'"{name}" not found'))
            pre = (body or {}).get("preconditions") or {}
            meta = store[key]["metadata"]
            if ("uid" in pre and pre["uid"] != meta["uid"]) or (
                "resourceVersion" in pre and pre["resourceVersion"] != meta["resourceVersion"]
            ):
                return httpx.Response(409, json=status(409, "Conflict", "precondition failed"))
            self._commit(plural, "DELETED", store[key])
            return httpx.Response(200, json={"kind": "Status", "status": "Success"})
        return httpx.Response(405, json=status(405, "MethodNotAllowed", method))

    def _watch(
        self, plural: str, selector: dict[str, str], ns: str | None, params: dict[str, str]
    ) -> httpx.Response:
        since = int(params.get("resourceVersion") or 0)
        if since < self.compacted_rv:
            return httpx.Response(410, json=status(410, "Expired", "too old resource version"))
        send, receive = trio.open_memory_channel[bytes | Exception](10_000)
        for rv, p, kind, obj in self.log:
            if rv > since and p == plural and self._selected(obj, selector, ns):
                send.send_nowait((json.dumps({"type": kind, "object": obj}) + "\n").encode())
        self.watchers.append(_Watcher(plural, selector, ns, send))
        return httpx.Response(200, stream=_WatchStream(receive))


def make_config(token: str | None = None) -> Any:
    from dracpu.kube.config import KubeConfig

    return KubeConfig(server="http://fake.invalid", origin="fake", token=token)


Callback = Callable[[], None]
