"""Run everything the kubelet talks to: the DRA service socket, then the registration socket.

:func:`serve_kubelet_plugin` is the one entry point the daemon needs. It serves, on the DRA socket,
``v1.DRAPlugin``, ``v1beta1.DRAPlugin`` (both delegating to one
:class:`~dracpu.kubelet.handler.ClaimHandler`), ``v1.DRAResourceHealth`` and
``v1alpha1.DRAResourceHealth`` (both streaming one :class:`~dracpu.kubelet.health.HealthBoard`);
only once that
socket is listening does it create the registration socket, because the kubelet may call the DRA
service right after ``GetInfo``. On stop the registration socket goes first (the kubelet
deregisters us) and the DRA socket last.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import trio

from dracpu import DRIVER_NAME
from dracpu.backoff import Backoff
from dracpu.errors import DracpuError
from dracpu.kubelet.aio_bridge import has_loop, open_loop
from dracpu.kubelet.dra_service import (
    V1_SERVICE_LABEL,
    V1BETA1_SERVICE_LABEL,
    ClaimDispatcher,
    DraPluginV1,
    DraPluginV1beta1,
)
from dracpu.kubelet.handler import ClaimHandler
from dracpu.kubelet.health import (
    DEFAULT_HEALTH_PERIOD,
    HEALTH_SERVICE_LABELS,
    HealthBoard,
    ResourceHealthServiceV1,
    ResourceHealthServiceV1alpha1,
)
from dracpu.kubelet.paths import DEFAULT_KUBELET_ROOT, PluginPaths
from dracpu.kubelet.registration import RegistrationService, RegistrationStatusBoard
from dracpu.kubelet.unix_grpc import GrpcLimits, serve_unix_grpc

_log = logging.getLogger(__name__)

DEFAULT_REGISTRATION_RETRY = 60.0
MAX_REGISTRATION_RETRY = 600.0


@dataclass(frozen=True, slots=True)
class KubeletPluginConfig:
    """How and where to serve the kubelet.

    ``pod_uid`` enables rolling-update socket names (needs kubelet >= 1.33); ``serve_v1`` /
    ``serve_v1beta1`` choose the DRA service versions offered (the kubelet takes the first one it
    supports, and ``v1`` is listed first); ``serialize`` runs one prepare/unprepare at a time.

    ``registration_retry``: if the kubelet has not confirmed the registration
    (NotifyRegistrationStatus with success) this many seconds after the registration socket
    appeared, the socket is re-created, which the kubelet sees as a new plugin. 1.34/1.35 kubelets
    do not retry a failed registration by themselves. The wait doubles per attempt (with +-20 %
    jitter) up to ``registration_retry_max``; once confirmed, the socket stays. ``None`` disables.

    ``grpc_limits`` bounds what a peer of either socket can make the plugin hold (message size,
    streams and connections, idle time; see :class:`~dracpu.kubelet.unix_grpc.GrpcLimits`).
    """

    driver_name: str = DRIVER_NAME
    kubelet_root: Path = DEFAULT_KUBELET_ROOT
    plugin_dir: Path | None = None
    registry_dir: Path | None = None
    pod_uid: str | None = None
    serve_v1: bool = True
    serve_v1beta1: bool = True
    health_period: float = DEFAULT_HEALTH_PERIOD
    serialize: bool = True
    registration_retry: float | None = DEFAULT_REGISTRATION_RETRY
    registration_retry_max: float = MAX_REGISTRATION_RETRY
    grpc_limits: GrpcLimits = field(default_factory=GrpcLimits)

    def paths(self) -> PluginPaths:
        """The socket paths this configuration uses (validates the inputs)."""
        return PluginPaths.for_driver(
            self.driver_name,
            self.kubelet_root,
            plugin_dir=self.plugin_dir,
            registry_dir=self.registry_dir,
            pod_uid=self.pod_uid,
        )

    def supported_services(self) -> tuple[str, ...]:
        """The ``supported_versions`` labels announced in GetInfo, in preference order."""
        labels = []
        if self.serve_v1:
            labels.append(V1_SERVICE_LABEL)
        if self.serve_v1beta1:
            labels.append(V1BETA1_SERVICE_LABEL)
        labels.extend(HEALTH_SERVICE_LABELS)
        return tuple(labels)


@dataclass(frozen=True, slots=True)
class RunningPlugin:
    """Handed to ``nursery.start`` callers once both sockets are listening."""

    paths: PluginPaths
    supported_services: tuple[str, ...]
    registration: RegistrationStatusBoard = field(repr=False)


async def serve_kubelet_plugin(
    config: KubeletPluginConfig,
    handler: ClaimHandler,
    health: HealthBoard,
    *,
    registration: RegistrationStatusBoard | None = None,
    task_status: trio.TaskStatus[RunningPlugin] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the kubelet until cancelled; use with ``await nursery.start(...)``.

    Opens a trio-asyncio loop unless the caller already runs in one. ``task_status.started``
    receives a :class:`RunningPlugin` once the DRA socket and then the registration socket are
    listening. Invalid configuration raises :class:`~dracpu.errors.InvalidValueError` and socket
    problems :class:`~dracpu.kubelet.errors.KubeletSocketError` before anything is served.

    Cancellation: cancelling the caller's scope stops both servers: the registration socket is
    removed first, then the DRA socket; in-flight calls are cancelled and every open kubelet
    connection is closed, so clients see ``UNAVAILABLE``. Returns only by raising.
    """
    paths = config.paths()
    services = config.supported_services()
    board = registration if registration is not None else RegistrationStatusBoard()
    dispatcher = ClaimDispatcher(handler, serialize=config.serialize)
    dra_services: list[object] = []
    if config.serve_v1:
        dra_services.append(DraPluginV1(dispatcher))
    if config.serve_v1beta1:
        dra_services.append(DraPluginV1beta1(dispatcher))
    dra_services.append(ResourceHealthServiceV1(health, period=config.health_period))
    dra_services.append(ResourceHealthServiceV1alpha1(health, period=config.health_period))
    registration_service = RegistrationService(
        driver_name=config.driver_name,
        endpoint=str(paths.dra_socket),
        supported_services=services,
        board=board,
    )
    loop_cm = contextlib.nullcontext() if has_loop() else open_loop()
    running = RunningPlugin(paths=paths, supported_services=services, registration=board)
    try:
        async with loop_cm, trio.open_nursery() as nursery:
            await nursery.start(dispatcher.run)
            async with serve_unix_grpc(paths.dra_socket, dra_services, config.grpc_limits):
                await _serve_registration(config, paths, registration_service, running, task_status)
    except BaseExceptionGroup as group:
        # trio-asyncio's loop runs a nursery, which wraps our own errors in a group; hand a
        # lone DracpuError (e.g. a socket problem) to the caller as itself.
        sole = _sole_leaf(group)
        if isinstance(sole, DracpuError):
            raise sole from None
        raise
    raise AssertionError("unreachable: sleep_forever returned")


async def _serve_registration(
    config: KubeletPluginConfig,
    paths: PluginPaths,
    service: RegistrationService,
    running: RunningPlugin,
    task_status: trio.TaskStatus[RunningPlugin],
) -> NoReturn:
    """Serve the registration socket forever, re-creating it while the kubelet has not
    confirmed the registration (see ``KubeletPluginConfig.registration_retry``).

    Cancellation: the socket is removed and its connections closed; nothing else to undo.
    """
    board = running.registration
    wait = config.registration_retry
    retries = (
        Backoff(initial=wait, maximum=max(wait, config.registration_retry_max)).counter()
        if wait is not None
        else None
    )
    started = False
    while True:
        async with serve_unix_grpc(paths.registration_socket, [service], config.grpc_limits):
            if not started:
                _log.info(
                    "kubelet plugin %s ready: registration %s, DRA %s, services %s",
                    config.driver_name,
                    paths.registration_socket,
                    paths.dra_socket,
                    ", ".join(running.supported_services),
                )
                task_status.started(running)
                started = True
            if retries is None:
                await trio.sleep_forever()
            wait = retries.next_delay()
            seen = board.state.notifications
            with trio.CancelScope(deadline=trio.current_time() + wait) as timer:
                while True:
                    state = await board.wait_for_notification(seen)
                    seen = state.notifications
                    # Confirmed: keep this socket (the kubelet re-registers it after restarts)
                    # unless a later notification reports a failure again.
                    timer.deadline = math.inf if state.registered else trio.current_time() + wait
            state = board.state
            _log.warning(
                "kubelet has not confirmed registration within %.1f s (%s); re-creating %s",
                wait,
                f"last error: {state.error}" if state.notifications else "no answer",
                paths.registration_socket,
            )


def _sole_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only leaf exception of a (nested) group, or None if there are several."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc
