"""The NRI plugin lifecycle: dial, register, serve, resynchronize, redial.

Per connection (a *session*): start serving conn 1 *before* sending RegisterPlugin (the runtime
sends Configure before it answers RegisterPlugin), answer Configure with the subscribed events
clamped to what the runtime knows, accumulate chunked Synchronize requests (``more=true``) and
hand the full state to the handler once, then dispatch events until the socket closes. The
runtime never reconnects to a plugin, so :meth:`NriPlugin.run` redials with bounded exponential
backoff with jitter and re-registers with the same name and index; the new Synchronize is the
full resync. Redials are logged by the rule of :class:`dracpu.backoff.RetryLoop`; a completed
Synchronize ends the failure streak.
"""

from __future__ import annotations

import logging
import os
import random
import re
import stat
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import betterproto2
import trio

from dracpu.backoff import Backoff, RetryLoop
from dracpu.core.names import DRIVER_NAME
from dracpu.errors import InvalidValueError, ProtocolError
from dracpu.nri.connection import FRAME_TIMEOUT, WRITE_TIMEOUT, MuxConnection
from dracpu.nri.errors import ConnectionClosedError, RpcStatusError
from dracpu.nri.events import DEFAULT_EVENTS, SUBSCRIBABLE, events_of, mask_of, runtime_valid_mask
from dracpu.nri.handler import LazyCreateHandler, NriHandler, RuntimeInfo, SyncCreateHandler
from dracpu.nri.lazy import CreateRequestView, read_create_request
from dracpu.nri.ttrpc import Code
from dracpu.protowire import MalformedMessageError, parse_strict
from generated.nri.pkg.api import v1alpha1 as api

REDIAL_BACKOFF = Backoff(initial=0.2, maximum=30.0, jitter=0.5)
"""Redial schedule: ±50 % jitter spreads a fleet of plugins restarted with their runtime."""
SOCKET_POLL = 0.25
"""While waiting to redial, how often the socket path is looked at: a socket that appears (or
is replaced, a restarted runtime) is dialled at once instead of after the rest of the delay."""

log = logging.getLogger("dracpu.nri")

PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"
DEFAULT_SOCKET_PATH = "/var/run/nri/nri.sock"
DEFAULT_REGISTRATION_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 2.0
# Synchronize chunks are accumulated until the last one; bound what one resync may hold.
MAX_SYNC_BYTES = 256 << 20

_NAME = re.compile(r"^[a-zA-Z0-9_.+-]+$")
_INDEX = re.compile(r"^[0-9]{2}$")

Dialer = Callable[[], Awaitable[trio.abc.Stream]]

# Notification RPCs (dedicated since NRI v0.12, StateChange before): method -> (event, type).
_NOTIFICATIONS: dict[str, tuple[api.Event, type[betterproto2.Message]]] = {
    "RunPodSandbox": (api.Event.RUN_POD_SANDBOX, api.RunPodSandboxRequest),
    "StopPodSandbox": (api.Event.STOP_POD_SANDBOX, api.StopPodSandboxRequest),
    "RemovePodSandbox": (api.Event.REMOVE_POD_SANDBOX, api.RemovePodSandboxRequest),
    "UpdatePodSandbox": (api.Event.UPDATE_POD_SANDBOX, api.UpdatePodSandboxRequest),
    "PostUpdatePodSandbox": (api.Event.POST_UPDATE_POD_SANDBOX, api.PostUpdatePodSandboxRequest),
    "PostCreateContainer": (api.Event.POST_CREATE_CONTAINER, api.PostCreateContainerRequest),
    "StartContainer": (api.Event.START_CONTAINER, api.StartContainerRequest),
    "PostStartContainer": (api.Event.POST_START_CONTAINER, api.PostStartContainerRequest),
    "PostUpdateContainer": (api.Event.POST_UPDATE_CONTAINER, api.PostUpdateContainerRequest),
    "RemoveContainer": (api.Event.REMOVE_CONTAINER, api.RemoveContainerRequest),
}


_M = TypeVar("_M", bound=betterproto2.Message)


def _decode(kind: type[_M], payload: bytes, method: str) -> _M:
    """Decode a request strictly (:mod:`dracpu.protowire`): truncated or wrong-typed payloads
    are refused with INVALID_ARGUMENT instead of decoded leniently."""
    try:
        return parse_strict(kind, payload)
    except MalformedMessageError as exc:
        raise RpcStatusError(Code.INVALID_ARGUMENT, f"undecodable {method} request: {exc}") from exc


def _read_view(payload: bytes, method: str) -> CreateRequestView:
    """The lazy, strict read of a CreateContainerRequest; INVALID_ARGUMENT when malformed."""
    try:
        return read_create_request(payload)
    except MalformedMessageError as exc:
        raise RpcStatusError(Code.INVALID_ARGUMENT, f"undecodable {method} request: {exc}") from exc


def _checked(value: object, kind: type[_M], name: str, method: str) -> _M | None:
    """``value`` if it is a ``kind`` message or absent; betterproto2 decodes a field sent with
    the wrong wire type as a raw scalar, which must not reach a handler."""
    if value is None or isinstance(value, kind):
        return value
    raise RpcStatusError(Code.INVALID_ARGUMENT, f"{method}: field {name} is not a message")


def _pod(value: object, method: str) -> api.PodSandbox | None:
    return _checked(value, api.PodSandbox, "pod", method)


def _container(value: object, method: str) -> api.Container | None:
    return _checked(value, api.Container, "container", method)


@dataclass
class _Session:
    """Protocol state of one connection."""

    conn: MuxConnection
    runtime: RuntimeInfo | None = None
    synchronized: trio.Event = field(default_factory=trio.Event)
    sync_pods: list[api.PodSandbox] = field(default_factory=list)
    sync_containers: list[api.Container] = field(default_factory=list)
    sync_bytes: int = 0


class NriPlugin:
    """An external NRI plugin that forwards runtime events to an :class:`NriHandler`.

    ``name`` must match ``[a-zA-Z0-9_.+-]+`` and ``index`` be two digits (NRI >= v0.12 enforces
    both). ``events`` is the desired subscription; Configure clamps it to the runtime's events.
    ``dial`` opens the socket (default: the unix socket at ``socket_path``); tests pass an
    in-memory stream factory. ``backoff`` paces redials (``rng`` seeds its jitter in tests).
    ``frame_timeout``/``write_timeout`` bound a stalled runtime (see :class:`MuxConnection`).
    A redial delay ends early when a new socket appears at ``socket_path`` (looked at every
    ``socket_poll`` seconds), so a runtime that comes back, or turns NRI on, is found within
    about ``socket_poll`` seconds however long the backoff has grown.
    """

    def __init__(
        self,
        handler: NriHandler,
        *,
        name: str = DRIVER_NAME,
        index: str = "90",
        socket_path: str = DEFAULT_SOCKET_PATH,
        events: Collection[api.Event] = DEFAULT_EVENTS,
        dial: Dialer | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        frame_timeout: float = FRAME_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        socket_poll: float = SOCKET_POLL,
    ) -> None:
        if not _NAME.match(name):
            raise InvalidValueError(
                "NRI plugin name must match [a-zA-Z0-9_.+-]+", value=name, origin="nri plugin name"
            )
        if not _INDEX.match(index):
            raise InvalidValueError(
                "NRI plugin index must be exactly two digits",
                value=index,
                origin="nri plugin index",
            )
        unknown = [e for e in events if e not in SUBSCRIBABLE]
        if unknown or not events:
            raise InvalidValueError(
                "NRI events must be a non-empty set of subscribable events",
                value=sorted(int(e) for e in unknown),
                origin="nri plugin events",
            )
        self._handler = handler
        self._lazy = handler if isinstance(handler, LazyCreateHandler) else None
        self._sync = (
            handler if self._lazy is not None and isinstance(handler, SyncCreateHandler) else None
        )
        self._name = name
        self._index = index
        self._socket_path = socket_path
        self._events = frozenset(events)
        self._dial: Dialer = dial if dial is not None else self._dial_unix
        self._retry = RetryLoop(
            f"NRI connection to {socket_path}",
            backoff if backoff is not None else REDIAL_BACKOFF,
            log,
            rng=rng,
        )
        self._frame_timeout = frame_timeout
        self._write_timeout = write_timeout
        self._socket_poll = socket_poll
        self._session: _Session | None = None
        self._sessions_synchronized = 0
        self.on_request: Callable[[str, float], None] | None = None
        """Called with (method, seconds) after each runtime request is answered (metrics)."""

    @property
    def name(self) -> str:
        """The registered plugin name (``index-name`` in runtime logs)."""
        return f"{self._index}-{self._name}"

    @property
    def connected(self) -> bool:
        """True while a session is registered and synchronized."""
        s = self._session
        return s is not None and s.synchronized.is_set() and not s.conn.closed

    @property
    def runtime(self) -> RuntimeInfo | None:
        """The current session's runtime description, None when not configured."""
        return self._session.runtime if self._session is not None else None

    @property
    def sessions_synchronized(self) -> int:
        """How many connections reached a completed Synchronize (1 + successful reconnects)."""
        return self._sessions_synchronized

    async def _dial_unix(self) -> trio.abc.Stream:
        return await trio.open_unix_socket(self._socket_path)

    # ------------------------------------------------------------------ public API

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay connected to the runtime forever, redialling with backoff after every loss.

        Reports started (for ``nursery.start``) after the first completed Synchronize, so
        ``await nursery.start(plugin.run)`` waits until the runtime is reachable. Never returns;
        connection problems are logged, never raised.

        Cancellation: closes the current connection (the runtime then drops the plugin) and
        cancels running handler calls.
        """
        started = False
        refused: tuple[int, int, int] | None = None
        while True:
            seen = self._socket_identity()
            try:
                stream = await self._dial()
            except OSError as exc:
                if isinstance(exc, ConnectionRefusedError) and seen is not None and seen != refused:
                    # A runtime binds its socket before it listens: a new socket refusing is
                    # tried once more shortly, not only after the rest of the backoff delay.
                    refused = seen
                    await trio.sleep(self._socket_poll)
                    continue
                await self._redial_sleep(self._retry.failed(f"cannot connect: {exc}"), seen)
                continue
            reason = ""
            async with trio.open_nursery() as nursery:
                conn = MuxConnection(
                    stream,
                    self._serve,
                    name=f"nri {self.name}",
                    frame_timeout=self._frame_timeout,
                    write_timeout=self._write_timeout,
                    serve_now=self._serve_now if self._sync is not None else None,
                )
                session = _Session(conn)
                self._session = session

                async def report_ready(session: _Session = session) -> None:
                    nonlocal started
                    await session.synchronized.wait()
                    log.info("NRI: plugin %s registered and synchronized", self.name)
                    if not started:
                        started = True
                        task_status.started()

                nursery.start_soon(report_ready)
                reason = await self._run_session(session)
                nursery.cancel_scope.cancel()
            self._session = None
            seen = self._socket_identity()
            await self._redial_sleep(self._retry.failed(f"connection lost: {reason}"), seen)

    def _socket_identity(self) -> tuple[int, int, int] | None:
        """(device, inode, change time) of the socket at ``socket_path``; None if there is none."""
        try:
            st = os.stat(self._socket_path)
        except OSError:
            return None
        if not stat.S_ISSOCK(st.st_mode):
            return None
        return (st.st_dev, st.st_ino, st.st_ctime_ns)

    async def _redial_sleep(self, delay: float, seen: tuple[int, int, int] | None) -> None:
        """Sleep ``delay`` seconds, or less once a socket other than ``seen`` is at the path.

        Cancellation: propagates at once; nothing to undo.
        """
        with trio.move_on_after(delay):
            while True:
                await trio.sleep(self._socket_poll)
                now = self._socket_identity()
                if now is not None and now != seen:
                    log.debug("NRI: a new socket at %s; dialling now", self._socket_path)
                    return

    async def update_containers(
        self,
        updates: Sequence[api.ContainerUpdate],
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 (sent as timeout_nano)
    ) -> list[api.ContainerUpdate]:
        """Ask the runtime to apply ``updates`` now (Runtime/UpdateContainers).

        For changes driven from outside NRI (e.g. DRA unprepare freeing CPUs). Unknown container
        ids are skipped by the runtime; a failed update arrives as :class:`RpcStatusError`
        (UNKNOWN, no detail). Returns the runtime's ``failed`` list (empty in practice).
        Raises :class:`ConnectionClosedError` when not connected and
        :class:`~dracpu.errors.ProtocolError` when awaited inside a handler, where it would
        deadlock the runtime.

        Cancellation: the call is abandoned; the runtime may still apply the updates.
        """
        session = self._session
        if session is None or not session.synchronized.is_set() or session.conn.closed:
            raise ConnectionClosedError("NRI plugin is not connected to a runtime")
        if session.conn.in_handler():
            raise ProtocolError(
                "UpdateContainers awaited inside an NRI handler would deadlock the runtime; "
                "return the updates in the handler's response instead"
            )
        payload = bytes(api.UpdateContainersRequest(update=list(updates)))
        answer = await session.conn.call(
            RUNTIME_SERVICE, "UpdateContainers", payload, timeout=timeout
        )
        return list(api.UpdateContainersResponse.parse(answer).failed)

    # ------------------------------------------------------------------ session

    async def _run_session(self, session: _Session) -> str:
        conn = session.conn
        async with trio.open_nursery() as nursery:
            await nursery.start(conn.run)
            request = api.RegisterPluginRequest(plugin_name=self._name, plugin_idx=self._index)
            try:
                await conn.call(
                    RUNTIME_SERVICE,
                    "RegisterPlugin",
                    bytes(request),
                    timeout=DEFAULT_REGISTRATION_TIMEOUT,
                )
            except (RpcStatusError, ConnectionClosedError) as exc:
                conn.close(f"registration failed: {exc}")
            return await conn.wait_closed()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _serve(self, service: str, method: str, payload: bytes) -> bytes:
        """Dispatch one Plugin-service request; report its duration to :attr:`on_request`."""
        began = time.perf_counter()
        try:
            return await self._dispatch(service, method, payload)
        finally:
            if self.on_request is not None:
                self.on_request(method, time.perf_counter() - began)

    def _serve_now(self, service: str, method: str, payload: bytes) -> bytes | None:
        """CreateContainer answered in the read loop when the handler can decide it at once
        (:class:`SyncCreateHandler`); None for every other request, or when it cannot."""
        if service != PLUGIN_SERVICE or method != "CreateContainer" or self._session is None:
            return None
        assert self._sync is not None
        began = time.perf_counter()
        answered = True
        try:
            answer = self._sync.create_container_now(_read_view(payload, method))
            answered = answer is not None
            return answer
        finally:
            if answered and self.on_request is not None:
                self.on_request(method, time.perf_counter() - began)

    async def _dispatch(self, service: str, method: str, payload: bytes) -> bytes:
        """Dispatch one Plugin-service request of the current session."""
        session = self._session
        if service != PLUGIN_SERVICE:
            raise RpcStatusError(Code.UNIMPLEMENTED, f"service {service}")
        if session is None:
            raise RpcStatusError(Code.UNAVAILABLE, "no session")
        h = self._handler
        match method:
            case "Configure":
                return await self._configure(
                    session, _decode(api.ConfigureRequest, payload, method)
                )
            case "Synchronize":
                return await self._synchronize(
                    session, _decode(api.SynchronizeRequest, payload, method), len(payload)
                )
            case "Shutdown":
                return b""
            case "CreateContainer":
                if self._lazy is not None:
                    return await self._lazy.create_container_view(_read_view(payload, method))
                req = _decode(api.CreateContainerRequest, payload, method)
                rsp = await h.create_container(
                    _pod(req.pod, method) or api.PodSandbox(),
                    _container(req.container, method) or api.Container(),
                )
                return bytes(rsp)
            case "UpdateContainer":
                upd = _decode(api.UpdateContainerRequest, payload, method)
                updates = await h.update_container(
                    _pod(upd.pod, method) or api.PodSandbox(),
                    _container(upd.container, method) or api.Container(),
                    _checked(upd.linux_resources, api.LinuxResources, "linux_resources", method),
                )
                return bytes(api.UpdateContainerResponse(update=list(updates)))
            case "StopContainer":
                stop = _decode(api.StopContainerRequest, payload, method)
                updates = await h.stop_container(
                    _pod(stop.pod, method) or api.PodSandbox(),
                    _container(stop.container, method) or api.Container(),
                )
                return bytes(api.StopContainerResponse(update=list(updates)))
            case "StateChange":
                evt = _decode(api.StateChangeEvent, payload, method)
                if evt.event not in SUBSCRIBABLE:
                    log.debug("NRI: ignored StateChange with event %r", evt.event)
                    return b""  # Go's stub ignores events it has no handler for, too
                await h.state_changed(
                    api.Event(evt.event),
                    _pod(evt.pod, method),
                    _container(evt.container, method),
                )
                return b""
        if method in _NOTIFICATIONS:
            event, kind = _NOTIFICATIONS[method]
            note = _decode(kind, payload, method)
            await h.state_changed(
                event,
                _pod(getattr(note, "pod", None), method),
                _container(getattr(note, "container", None), method),
            )
            return b""  # every *Response of a notification RPC is empty
        raise RpcStatusError(Code.UNIMPLEMENTED, f"method {method}")

    async def _configure(self, session: _Session, req: api.ConfigureRequest) -> bytes:
        valid = runtime_valid_mask(req.NRI_version)
        wanted = mask_of(self._events)
        mask = wanted & valid
        if mask != wanted:
            log.warning(
                "NRI: runtime %s %s (NRI %s) does not know events %s; not subscribing",
                req.runtime_name,
                req.runtime_version,
                req.NRI_version or "< v0.12",
                sorted(e.name for e in events_of(wanted & ~valid)),
            )
        if mask == 0:
            raise RpcStatusError(
                Code.FAILED_PRECONDITION, "none of the plugin's events is supported by this runtime"
            )
        info = RuntimeInfo(
            name=req.runtime_name,
            version=req.runtime_version,
            nri_version=req.NRI_version,
            registration_timeout=(
                req.registration_timeout / 1000
                if req.registration_timeout > 0
                else DEFAULT_REGISTRATION_TIMEOUT
            ),
            request_timeout=(
                req.request_timeout / 1000 if req.request_timeout > 0 else DEFAULT_REQUEST_TIMEOUT
            ),
            config=req.config,
            events=events_of(mask),
        )
        await self._handler.configure(info)
        session.runtime = info
        log.info(
            "NRI: configured by %s %s (NRI %s), events 0x%x, request timeout %.1f s",
            info.name,
            info.version,
            info.nri_version or "unknown",
            mask,
            info.request_timeout,
        )
        return bytes(api.ConfigureResponse(events=mask))

    async def _synchronize(
        self, session: _Session, req: api.SynchronizeRequest, size: int
    ) -> bytes:
        session.sync_bytes += size
        if session.sync_bytes > MAX_SYNC_BYTES:
            session.sync_pods, session.sync_containers, session.sync_bytes = [], [], 0
            raise RpcStatusError(
                Code.RESOURCE_EXHAUSTED, f"synchronize state exceeds {MAX_SYNC_BYTES} bytes"
            )
        session.sync_pods.extend(req.pods)
        session.sync_containers.extend(req.containers)
        if req.more:
            return bytes(api.SynchronizeResponse(more=True))
        pods, containers = session.sync_pods, session.sync_containers
        session.sync_pods, session.sync_containers, session.sync_bytes = [], [], 0
        updates = await self._handler.synchronize(pods, containers)
        session.synchronized.set()
        self._sessions_synchronized += 1
        self._retry.succeeded()
        return bytes(api.SynchronizeResponse(update=list(updates), more=False))
