"""A scripted HTTP/1.1 server on a real loopback socket, for hostile-server tests and fuzzing.

Unlike ``fake_apiserver`` (an ``httpx.MockTransport``), this puts bytes on a TCP socket, so the
client's real transport, streaming and size caps are exercised. Each connection serves one
request and closes (``Connection: close``); a :data:`Script` decides what goes back, and may
write anything at all: a broken body, an endless line, a stream that closes after one event.
:class:`GoodApi` is a well-behaved script (a node list and a watch that sends bookmarks and stays
open), used to show that a client still works after an attack.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio


@dataclass(frozen=True)
class HttpRequest:
    """The request line and query of one request."""

    method: str
    path: str
    params: dict[str, str]

    @property
    def is_watch(self) -> bool:
        return self.params.get("watch") == "true"


Script = Callable[[HttpRequest, trio.SocketStream], Awaitable[None]]


async def send_head(
    stream: trio.SocketStream, code: int = 200, *, length: int | None = None
) -> None:
    """Status line and headers; without ``length`` the body runs until the connection closes."""
    head = f"HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nConnection: close\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    await stream.send_all((head + "\r\n").encode())


async def send_body(stream: trio.SocketStream, body: bytes | Any, code: int = 200) -> None:
    """A complete response: ``body`` as is when bytes, else as JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    await send_head(stream, code, length=len(data))
    await stream.send_all(data)


def event_line(kind: str, obj: Any) -> bytes:
    return (json.dumps({"type": kind, "object": obj}) + "\n").encode()


def bookmark(rv: str) -> bytes:
    return event_line("BOOKMARK", {"kind": "Node", "metadata": {"resourceVersion": rv}})


@dataclass
class HttpPeer:
    """Serves ``script`` on 127.0.0.1; ``requests`` records (monotonic time, request)."""

    script: Script
    requests: list[tuple[float, HttpRequest]] = field(default_factory=list)
    url: str = ""

    async def start(self, nursery: trio.Nursery) -> str:
        """Listen on a free port; returns the base URL. The server lives as long as ``nursery``."""
        listeners = await nursery.start(
            partial(trio.serve_tcp, self._serve_one, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def count(self, *, watch: bool | None = None, since: float = 0.0) -> int:
        return sum(
            1 for t, r in self.requests if t >= since and (watch is None or r.is_watch == watch)
        )

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        try:
            head = bytearray()
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(65536)
                if not chunk or len(head) > 1 << 20:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _ = line.split(" ", 2)
            url = urlsplit(target)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            request = HttpRequest(method, url.path, params)
            self.requests.append((time.monotonic(), request))
            await self.script(request, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


class GoodApi:
    """A well-behaved API for one resource: lists ``items``; a watch sends each item as ADDED,
    then a bookmark per ``bookmark_every`` seconds, and stays open until the client leaves."""

    def __init__(self, items: list[dict[str, Any]] | None = None, rv: str = "10") -> None:
        self.items = items if items is not None else [{"metadata": {"name": "a"}}]
        self.rv = rv
        self.bookmark_every = 0.2

    async def __call__(self, request: HttpRequest, stream: trio.SocketStream) -> None:
        if request.is_watch:
            await send_head(stream)
            for item in self.items:  # as if just created: a resumed watch learns them too
                await stream.send_all(event_line("ADDED", item))
            while True:
                await stream.send_all(bookmark(self.rv))
                await trio.sleep(self.bookmark_every)
        await send_body(
            stream, {"kind": "List", "metadata": {"resourceVersion": self.rv}, "items": self.items}
        )
