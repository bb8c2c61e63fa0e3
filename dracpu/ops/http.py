"""The operator's HTTP endpoint: ``/healthz``, ``/readyz``, ``/metrics``, ``/status``, ``/logs``.

Served by hypercorn's trio worker inside the daemon's nursery, on ``--bind-address`` (upstream's
default ``:8080``). The ASGI application here only routes five GET paths to the callables the
daemon passes in, so it needs no web framework:

- ``/healthz``: 200 ``ok`` when every :class:`HealthPart` is healthy, otherwise 503 with one line
  per failing part (``kubelet-registration: not registered``), so a probe's event names it;
- ``/readyz``: the same rule over the parts marked ``for_readiness``;
- ``/metrics``: the Prometheus text exposition of :class:`~dracpu.ops.metrics.DriverMetrics`;
- ``/status``: the JSON document ``dracpu status`` prints;
- ``/logs``: the last log lines kept in memory (for ``dracpu gather``).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from dracpu.errors import InvalidValueError
from dracpu.ops.metrics import CONTENT_TYPE_LATEST, DriverMetrics

__all__ = ["DEFAULT_BIND_ADDRESS", "Endpoint", "HealthPart", "parse_bind_address", "serve_endpoint"]

log = logging.getLogger(__name__)

DEFAULT_BIND_ADDRESS = ":8080"
"""Upstream's default ``--bind-address``: every interface, port 8080."""


@dataclass(frozen=True, slots=True)
class HealthPart:
    """One part of the daemon's health: its name, whether it is healthy, and why not."""

    name: str
    healthy: bool
    detail: str = ""
    for_readiness: bool = True


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What the endpoint serves: health parts, metrics and the status document."""

    health: Callable[[], Sequence[HealthPart]]
    metrics: DriverMetrics
    status: Callable[[], Mapping[str, Any]]
    recent_logs: Callable[[], str] | None = None
    """``/logs``: the daemon's last log lines (``dracpu.logs.RecentLines.text``)."""


def parse_bind_address(text: str, *, origin: str = "--bind-address") -> str:
    """``host:port`` for hypercorn from a Go-style address (``:8080``: every interface).

    Port 0 asks the kernel for a free port (tests use it).
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidValueError(f"invalid address {text!r}: want [host]:port", origin=origin)
    host = host.strip("[]") or "0.0.0.0"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _health_body(parts: Iterable[HealthPart]) -> tuple[int, bytes]:
    failing = [p for p in parts if not p.healthy]
    if not failing:
        return 200, b"ok\n"
    lines = "".join(f"{p.name}: {p.detail or 'unhealthy'}\n" for p in failing)
    return 503, lines.encode()


class _App:
    """The ASGI application; only GET and HEAD of the four paths, everything else 404/405."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    def _answer(self, path: str) -> tuple[int, bytes, bytes]:
        ep = self._endpoint
        if path == "/healthz":
            status, body = _health_body(ep.health())
            return status, body, b"text/plain; charset=utf-8"
        if path == "/readyz":
            status, body = _health_body(p for p in ep.health() if p.for_readiness)
            return status, body, b"text/plain; charset=utf-8"
        if path == "/metrics":
            return 200, ep.metrics.render(), CONTENT_TYPE_LATEST.encode()
        if path == "/status":
            body = json.dumps(ep.status(), indent=2, sort_keys=True).encode() + b"\n"
            return 200, body, b"application/json"
        if path == "/logs" and ep.recent_logs is not None:
            return 200, ep.recent_logs().encode(), b"text/plain; charset=utf-8"
        return 404, b"not found\n", b"text/plain; charset=utf-8"

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            status, body, ctype = 405, b"method not allowed\n", b"text/plain; charset=utf-8"
        else:
            try:
                status, body, ctype = self._answer(scope["path"])
            except Exception as exc:  # a broken source must not take the endpoint down
                log.warning("endpoint %s failed: %s", scope["path"], exc)
                status, body, ctype = 500, f"{exc}\n".encode(), b"text/plain; charset=utf-8"
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


def _check_bindable(address: str) -> None:
    """Raise ``OSError`` if ``address`` cannot be bound (port taken), with our socket closed.

    Hypercorn leaks the socket of a failed bind; trying first keeps a retry loop clean.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, int(port)))


async def serve_endpoint(
    endpoint: Endpoint,
    bind: str = DEFAULT_BIND_ADDRESS,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``endpoint`` on ``bind`` until cancelled; ``task_status`` gets the bound addresses.

    Cancellation closes the listening socket and open connections and returns; nothing outlives
    the call. A port already in use raises ``OSError`` before ``task_status.started``.
    """
    address = parse_bind_address(bind)
    _check_bindable(address)
    config = Config()
    config.bind = [address]
    config.accesslog = None
    config.keep_alive_timeout = 30
    config.graceful_timeout = 1
    config.h11_max_incomplete_size = 16 * 1024
    app: Any = _App(endpoint)  # hypercorn types the ASGI callable by its own TypedDict scopes
    await serve(app, config, shutdown_trigger=trio.sleep_forever, task_status=task_status)
