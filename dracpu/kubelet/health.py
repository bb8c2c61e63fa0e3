"""Device health for the kubelet (``DRAResourceHealth/NodeWatchResources``, v1 and v1alpha1).

Both versions carry the same messages. A 1.37+ kubelet picks, from the plugin's
``supported_versions``, the first of ``v1.DRAResourceHealth`` and ``v1alpha1.DRAResourceHealth``
it finds (v1 preferred; v1alpha1 stays accepted through 1.39); 1.34-1.36 kubelets only know
v1alpha1. dracpu serves and announces both, from one :class:`HealthBoard`.

The kubelet opens one long-lived server stream per plugin instance and expects every message to
carry the *complete* list of the driver's devices. A device whose last report is older than its
timeout (``health_check_timeout_seconds``, or 30 s when 0) turns ``Unknown``, so the list is sent
when it changes *and* periodically (every ``period`` seconds, 10 s by default), each time stamped
with the current time.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from types import ModuleType

import trio

from dracpu.kubelet.aio_bridge import run_trio
from generated import v1, v1alpha1

_log = logging.getLogger(__name__)

# The labels the kubelet understands in PluginInfo.supported_versions ("<package>.<service>").
HEALTH_V1_SERVICE_LABEL = "v1.DRAResourceHealth"
HEALTH_V1ALPHA1_SERVICE_LABEL = "v1alpha1.DRAResourceHealth"
HEALTH_SERVICE_LABELS = (HEALTH_V1_SERVICE_LABEL, HEALTH_V1ALPHA1_SERVICE_LABEL)
"""Announced in this order, newest first (the kubelet's own preference order too)."""

DEFAULT_HEALTH_PERIOD = 10.0


class Health(enum.Enum):
    """Health of one device, as the kubelet understands it."""

    UNKNOWN = 0
    HEALTHY = 1
    UNHEALTHY = 2


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """Health of one published device.

    ``message`` is shown in pod status by 1.36+ kubelets (at most 1024 characters);
    ``timeout_seconds`` overrides the kubelet's 30 s staleness timeout (1.35+; 0 = default).
    """

    pool_name: str
    device_name: str
    health: Health = Health.HEALTHY
    message: str = ""
    timeout_seconds: int = 0


class HealthBoard:
    """The current health of every device; streams are woken when it changes.

    :meth:`publish` must be called from the trio thread.
    """

    def __init__(self, devices: Iterable[DeviceHealth] = ()) -> None:
        self._devices = tuple(devices)
        self._generation = 0
        self._changed = trio.Event()

    @property
    def devices(self) -> tuple[DeviceHealth, ...]:
        """The current device list."""
        return self._devices

    def publish(self, devices: Iterable[DeviceHealth]) -> bool:
        """Replace the device list; returns whether it changed (only then are streams woken)."""
        new = tuple(devices)
        if new == self._devices:
            return False
        self._devices = new
        self._generation += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        return True

    async def next_update(
        self, seen_generation: int, period: float
    ) -> tuple[int, tuple[DeviceHealth, ...]]:
        """Return ``(generation, devices)`` once the list differs from ``seen_generation`` or
        ``period`` seconds passed, whichever is first (immediately if already different).

        Cancellation: returns nothing; safe to cancel at any time.
        """
        if seen_generation == self._generation:
            with trio.move_on_after(period):
                await self._changed.wait()
        return self._generation, self._devices


class _HealthStream:
    """The stream both service versions serve: the full list now, on change and every period.

    ``api`` is the generated module of one version (``generated.v1`` or ``generated.v1alpha1``);
    the two define the same messages, field for field.
    """

    def __init__(
        self, board: HealthBoard, period: float, clock: Callable[[], float], api: ModuleType
    ) -> None:
        self._board = board
        self._period = period
        self._clock = clock
        self._api = api

    async def responses(self) -> AsyncIterator[object]:
        """Yield a ``NodeWatchResourcesResponse`` now, then on every change and at least every
        period.

        Cancellation: the stream ends when the kubelet goes away or the server stops; nothing
        to clean up.
        """
        api = self._api
        generation = -1
        _log.info("kubelet is watching device health (%s)", api.__name__.rsplit(".", 1)[-1])
        while True:
            generation, devices = await run_trio(self._board.next_update, generation, self._period)
            now = int(self._clock())
            yield api.NodeWatchResourcesResponse(
                devices=[
                    api.DeviceHealth(
                        device=api.DeviceIdentifier(
                            pool_name=d.pool_name, device_name=d.device_name
                        ),
                        health=api.HealthStatus(d.health.value),
                        last_updated_time=now,
                        health_check_timeout_seconds=d.timeout_seconds,
                        message=d.message,
                    )
                    for d in devices
                ]
            )


class ResourceHealthServiceV1(v1.DraResourceHealthBase):  # type: ignore[misc]
    """``v1.DRAResourceHealth`` (1.37+ kubelets prefer it): the full device health list."""

    def __init__(
        self,
        board: HealthBoard,
        *,
        period: float = DEFAULT_HEALTH_PERIOD,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stream = _HealthStream(board, period, clock, v1)

    async def node_watch_resources(
        self, message: v1.NodeWatchResourcesRequest
    ) -> AsyncIterator[v1.NodeWatchResourcesResponse]:
        """Yield the full list now, then on every change and at least every ``period`` seconds.

        Cancellation: the stream ends when the kubelet goes away or the server stops; nothing
        to clean up.
        """
        del message
        async for response in self._stream.responses():
            yield response


class ResourceHealthServiceV1alpha1(v1alpha1.DraResourceHealthBase):  # type: ignore[misc]
    """``v1alpha1.DRAResourceHealth`` (1.34-1.36 kubelets; 1.37-1.39 still accept it)."""

    def __init__(
        self,
        board: HealthBoard,
        *,
        period: float = DEFAULT_HEALTH_PERIOD,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stream = _HealthStream(board, period, clock, v1alpha1)

    async def node_watch_resources(
        self, message: v1alpha1.NodeWatchResourcesRequest
    ) -> AsyncIterator[v1alpha1.NodeWatchResourcesResponse]:
        """Yield the full list now, then on every change and at least every ``period`` seconds.

        Cancellation: the stream ends when the kubelet goes away or the server stops; nothing
        to clean up.
        """
        del message
        async for response in self._stream.responses():
            yield response
