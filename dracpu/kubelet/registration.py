"""The kubelet plugin registration service (``pluginregistration.Registration``).

The kubelet finds our registration socket in ``<kubelet root>/plugins_registry``, calls
``GetInfo`` (with a 1 s deadline) to learn the plugin type, driver name, DRA endpoint and the
gRPC services we offer, then reports the outcome with ``NotifyRegistrationStatus``. That outcome
is recorded in a :class:`RegistrationStatusBoard` so the daemon can report and act on it (for
example re-create the registration socket when no success arrives).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpclib
import grpclib.const
import trio

from generated import pluginregistration

_log = logging.getLogger(__name__)

# PluginInfo.type for DRA drivers (k8s.io/kubelet pluginregistration constant DRAPlugin).
DRA_PLUGIN_TYPE = "DRAPlugin"


@dataclass(frozen=True, slots=True)
class RegistrationState:
    """What the kubelet last told us about our registration.

    ``notifications`` counts NotifyRegistrationStatus calls (0: the kubelet has not answered
    yet); ``error`` is the kubelet's reason when ``registered`` is false; ``updated_at`` is the
    wall-clock time of the last notification (0.0 when none).
    """

    registered: bool = False
    error: str = ""
    notifications: int = 0
    updated_at: float = 0.0


class RegistrationStatusBoard:
    """Holds the latest :class:`RegistrationState` and wakes trio tasks waiting for a change.

    :meth:`record` must be called from the trio thread (the registration service does so).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._state = RegistrationState()
        self._changed = trio.Event()

    @property
    def state(self) -> RegistrationState:
        """The latest state (immutable snapshot)."""
        return self._state

    def record(self, registered: bool, error: str) -> RegistrationState:
        """Store a notification from the kubelet and wake waiters; returns the new state."""
        self._state = RegistrationState(
            registered=registered,
            error=error,
            notifications=self._state.notifications + 1,
            updated_at=self._clock(),
        )
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        return self._state

    async def wait_for_notification(self, seen: int) -> RegistrationState:
        """Wait until more than ``seen`` notifications arrived; returns the state then.

        Cancellation: returns nothing and records nothing; safe to cancel at any time.
        """
        while self._state.notifications <= seen:
            await self._changed.wait()
        return self._state


class RegistrationService(pluginregistration.RegistrationBase):  # type: ignore[misc]
    """Answers the kubelet's GetInfo and records its NotifyRegistrationStatus."""

    def __init__(
        self,
        *,
        driver_name: str,
        endpoint: str,
        supported_services: Sequence[str],
        board: RegistrationStatusBoard,
    ) -> None:
        self._info = pluginregistration.PluginInfo(
            type=DRA_PLUGIN_TYPE,
            name=driver_name,
            endpoint=endpoint,
            supported_versions=list(supported_services),
        )
        self._board = board

    async def get_info(
        self, message: pluginregistration.InfoRequest
    ) -> pluginregistration.PluginInfo:
        """Return the plugin info (no I/O). Cancellation: nothing to undo."""
        del message
        _log.info("kubelet asked for plugin info; endpoint %s", self._info.endpoint)
        return self._info

    async def notify_registration_status(
        self, message: pluginregistration.RegistrationStatus
    ) -> pluginregistration.RegistrationStatusResponse:
        """Record the kubelet's verdict. On rejection answer with an error, like the Go helper.

        Cancellation: the state is recorded before the first await, so it is never lost.
        """
        state = self._board.record(bool(message.plugin_registered), str(message.error))
        if state.registered:
            _log.info("registered with the kubelet")
            return pluginregistration.RegistrationStatusResponse()
        _log.error("kubelet rejected the plugin registration: %s", state.error)
        raise grpclib.GRPCError(
            grpclib.const.Status.UNKNOWN, f"failed registration process: {state.error}"
        )
