"""The boundary between the NRI transport and the pinning policy.

The transport decodes requests, keeps protocol state (Configure, chunked Synchronize,
StateChange vs per-event RPCs) and calls an :class:`NriHandler`; it holds no policy. Messages are
the generated ``nri.pkg.api.v1alpha1`` types. Handlers run while the runtime holds its NRI lock
with a request deadline (2 s by default), so they must answer from memory, quickly, and must
never await :meth:`dracpu.nri.NriPlugin.update_containers` (that would deadlock the runtime;
the plugin refuses it with an error). Return updates in the response instead.

A handler that also implements :class:`LazyCreateHandler` gets CreateContainer as a
:class:`~dracpu.nri.lazy.CreateRequestView` and answers with encoded bytes (the hot path, see
``docs/dev/protocols.md``); every other handler and request goes through betterproto2. One
that also implements :class:`SyncCreateHandler` may answer CreateContainer synchronously, in
the connection's read loop, with no task of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from dracpu.nri.lazy import CreateRequestView
from generated.nri.pkg.api.v1alpha1 import (
    Container,
    ContainerUpdate,
    CreateContainerResponse,
    Event,
    LinuxResources,
    PodSandbox,
)


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """What Configure told us about the runtime; timeouts default to 5 s / 2 s when absent."""

    name: str
    version: str
    nri_version: str
    registration_timeout: float
    request_timeout: float
    config: str
    events: frozenset[Event]


class NriHandler(Protocol):
    """Policy callbacks for one plugin; every method may be called again after a reconnect.

    Each call runs in its own trio task under the runtime's request deadline. Cancellation
    (deadline passed or connection lost) arrives as ``trio.Cancelled``; let it propagate. An
    exception becomes a ttrpc error status (code UNKNOWN with its text), which for
    CreateContainer fails the container's creation.
    """

    async def configure(self, runtime: RuntimeInfo) -> None:
        """The runtime accepted the registration; ``runtime.events`` is the final subscription."""
        ...

    async def synchronize(
        self, pods: Sequence[PodSandbox], containers: Sequence[Container]
    ) -> Sequence[ContainerUpdate]:
        """The runtime's full state after (re)connecting; return updates re-asserting pins."""
        ...

    async def create_container(
        self, pod: PodSandbox, container: Container
    ) -> CreateContainerResponse:
        """Return the adjustment for the new container and updates for *other* containers."""
        ...

    async def update_container(
        self, pod: PodSandbox, container: Container, resources: LinuxResources | None
    ) -> Sequence[ContainerUpdate]:
        """CRI UpdateContainerResources; an update for ``container`` itself overrides the CRI's."""
        ...

    async def stop_container(
        self, pod: PodSandbox, container: Container
    ) -> Sequence[ContainerUpdate]:
        """The container stopped; return updates for others (e.g. CPUs back to shared)."""
        ...

    async def state_changed(
        self, event: Event, pod: PodSandbox | None, container: Container | None
    ) -> None:
        """A notification event (pod run/stop/remove, container start/remove, post-* events).

        Delivered the same way whether it arrived as a dedicated RPC (NRI >= v0.12) or as
        StateChange (older runtimes).
        """
        ...


@runtime_checkable
class LazyCreateHandler(Protocol):
    """The fast CreateContainer path: the plugin reads only the policy's fields
    (:func:`dracpu.nri.lazy.read_create_request`, strictly checked) and sends the returned
    bytes as they are. The same rules as :meth:`NriHandler.create_container` apply."""

    async def create_container_view(self, request: CreateRequestView) -> bytes:
        """Return the encoded CreateContainerResponse for the new container."""
        ...


@runtime_checkable
class SyncCreateHandler(Protocol):
    """The fastest CreateContainer path: answered in the connection's read loop, with no task,
    no deadline scope and no scheduler round trip, when nothing else is in flight."""

    def create_container_now(self, request: CreateRequestView) -> bytes | None:
        """The encoded CreateContainerResponse if it can be decided now without awaiting, else
        None (the request then goes to :meth:`LazyCreateHandler.create_container_view`). It
        must not block: it runs in the read loop. Raises as ``create_container`` does."""
        ...
