"""The NRI handler that enforces the pinning policy: translate, decide, translate back.

:class:`PolicyHandler` implements :class:`dracpu.nri.handler.NriHandler`. It translates each
runtime request into a core event (:mod:`dracpu.nri.translate`), hands it to a
:class:`Decider` and turns the reply effect into the NRI answer. It holds no state and no policy.

The node state is owned by one place: the daemon's :class:`~dracpu.daemon.owner.Owner`, whose
task applies every transition (``OwnerDecider`` queues events to it), so NRI and cgroup events
never interleave with the kubelet's. A CreateContainer is answered from memory: container
events write no checkpoint of their own (one queued together with a kubelet prepare waits for
that group's write). :class:`StepDecider` is the same contract over a bare state, for tests and
benches.

Events subscribed (:data:`POLICY_EVENTS`): CreateContainer (pin or reject), UpdateContainer (the
CRI rewriting a cpuset: our cpuset overrides it), StopContainer and RemoveContainer (the
container no longer consumes its claim: a finished init container hands it on). Pods are read
from each request, so no pod events are needed.

Widening the shared pool (unprepare, topology changes) happens outside any NRI request: the
state owner's ``UpdateContainers`` effects go to :class:`ContainerUpdater`, whose task calls
:meth:`dracpu.nri.NriPlugin.update_containers`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from dracpu.core import node
from dracpu.core.pinning import ContainerInfo, ContainerUpdate
from dracpu.logs import V, fields
from dracpu.nri import translate
from dracpu.nri.errors import ConnectionClosedError, RpcStatusError
from dracpu.nri.handler import RuntimeInfo
from dracpu.nri.lazy import CreateRequestView, ResponseEncoder
from dracpu.nri.ttrpc import Code
from generated.nri.pkg.api import v1alpha1 as api

__all__ = [
    "POLICY_EVENTS",
    "ContainerRejectedError",
    "ContainerUpdater",
    "Decided",
    "Decider",
    "PolicyHandler",
    "StepDecider",
]

_log = logging.getLogger("dracpu.nri.policy")

POLICY_EVENTS: frozenset[api.Event] = frozenset(
    {
        api.Event.CREATE_CONTAINER,
        api.Event.UPDATE_CONTAINER,
        api.Event.STOP_CONTAINER,
        api.Event.REMOVE_CONTAINER,
    }
)
"""The only events the pinning policy needs."""

_GONE = (api.ContainerState.CONTAINER_STOPPED,)


class ContainerRejectedError(RpcStatusError):
    """The policy refused a container: the runtime fails the creation with this status
    (FAILED_PRECONDITION, the message naming the variable, claim or container)."""

    def __init__(self, reason: str) -> None:
        super().__init__(Code.FAILED_PRECONDITION, reason)


class Decider(Protocol):
    """Applies one core event to the node state and returns the event's reply effect."""

    @property
    def state(self) -> node.NodeState:
        """The current node state (read-only)."""
        ...

    async def apply(self, event: node.Event) -> node.Effect | None:
        """Run ``step``, store the state, run the side effects; return the reply (or None).

        Transitions are applied one at a time by the state's one owner. Raises
        :class:`~dracpu.errors.DracpuError` when the state could not be persisted.
        Cancellation: once queued, the event is applied; only the answer is lost.
        """
        ...

    def try_apply(self, event: node.Event) -> Decided | None:
        """Apply ``event`` now, in the calling task, when that cannot interleave with another
        transition and needs no await; None when it must go through :meth:`apply`."""
        ...


@dataclass(frozen=True, slots=True)
class Decided:
    """An event applied at once by :meth:`Decider.try_apply`: its reply effect (or None)."""

    reply: node.Effect | None


class StepDecider:
    """A :class:`Decider` over an in-memory state: ``step`` and keep the result.

    ``on_updates`` receives the ``UpdateContainers`` effects (container updates to send outside
    any NRI request). For tests and benches; the daemon uses its state owner.
    """

    def __init__(
        self,
        state: node.NodeState,
        *,
        on_updates: Callable[[node.UpdateContainers], None] = lambda _: None,
    ) -> None:
        self._state = state
        self.on_updates = on_updates
        self.effects: list[node.Effect] = []

    @property
    def state(self) -> node.NodeState:
        """The current state."""
        return self._state

    async def apply(self, event: node.Event) -> node.Effect | None:
        """:meth:`apply_now`; cancellation cannot interrupt it (no await)."""
        return self.apply_now(event)

    def try_apply(self, event: node.Event) -> Decided:
        """:meth:`apply_now`, which is always possible here."""
        return Decided(self.apply_now(event))

    def apply_now(self, event: node.Event) -> node.Effect | None:
        """Step, store, hand on updates; return the reply effect."""
        self._state, effects = node.step(self._state, event)
        reply: node.Effect | None = None
        for effect in effects:
            self.effects.append(effect)
            if isinstance(effect, node.UpdateContainers):
                self.on_updates(effect)
            elif isinstance(
                effect,
                node.AdjustContainer
                | node.RejectContainer
                | node.ReplySynchronize
                | node.ReplyUpdate,
            ):
                reply = effect
        return reply


class PolicyHandler:
    """An :class:`~dracpu.nri.handler.NriHandler` enforcing the pinning policy through
    ``decider``; ``kind_of`` tells init containers and sidecars (NRI does not)."""

    def __init__(self, decider: Decider, *, kind_of: translate.KindOf = translate.regular) -> None:
        self.decider = decider
        self.kind_of = kind_of
        self.runtime: RuntimeInfo | None = None
        self._encoder = ResponseEncoder()

    async def configure(self, runtime: RuntimeInfo) -> None:
        """Remember the runtime; no I/O. Cancellation: nothing to undo."""
        self.runtime = runtime

    async def synchronize(
        self, pods: Sequence[api.PodSandbox], containers: Sequence[api.Container]
    ) -> Sequence[api.ContainerUpdate]:
        """Reconcile with the runtime's containers after every (re)connect.

        Pins of known claims stay; drifted exclusive containers are re-pinned; running
        containers of claims the state lacks are adopted when valid and free (migration from
        the upstream driver); shared containers are re-asserted. Stopped containers are left
        out: they consume nothing. Cancellation: a queued event is still applied; the next
        Synchronize computes the same answer.
        """
        by_id = {p.id: translate.pod_info(p) for p in pods}
        infos = tuple(
            translate.container_info(
                by_id.get(c.pod_sandbox_id) or node.PodInfo(uid=c.pod_sandbox_id),
                c,
                kind_of=self.kind_of,
                with_cpus=True,
            )
            for c in containers
            if c.state not in _GONE
        )
        reply = await self.decider.apply(node.RuntimeSynchronized(infos))
        if not isinstance(reply, node.ReplySynchronize):
            return []
        _log.info("NRI synchronize: %d container(s), %d update(s)", len(infos), len(reply.updates))
        return translate.to_updates(reply.updates)

    async def create_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> api.CreateContainerResponse:
        """Pin the new container (and shrink shared ones), or fail its creation.

        Raises :class:`ContainerRejectedError` with the policy's reason. Cancellation (the
        runtime's deadline): a queued decision is still applied; the runtime retries the create
        as the same consumer.
        """
        info = translate.container_info(translate.pod_info(pod), container, kind_of=self.kind_of)
        reply = await self.decider.apply(node.ContainerCreated(info))
        if isinstance(reply, node.RejectContainer):
            _log.warning("rejected %s: %s", info, reply.reason, extra=_where(info))
            raise ContainerRejectedError(reply.reason)
        if not isinstance(reply, node.AdjustContainer):
            raise ContainerRejectedError(f"{info}: the policy gave no answer")
        _log.log(V(2), "container pinned to CPUs %s", reply.cpus, extra=_where(info))
        return translate.create_response(
            reply.cpus,
            reply.updates,
            mems=reply.memory.mems_text,
            hugepage_limits=reply.memory.hugepage_limits,
        )

    async def create_container_view(self, request: CreateRequestView) -> bytes:
        """:meth:`create_container` on the plugin's lazy path: the request's policy fields in,
        the encoded response out (each cpuset's adjustment and update body encoded once).
        Raises and cancels as :meth:`create_container` does."""
        info = translate.view_info(request, kind_of=self.kind_of)
        return self._encode_created(info, await self.decider.apply(node.ContainerCreated(info)))

    def create_container_now(self, request: CreateRequestView) -> bytes | None:
        """:meth:`create_container_view` in the connection's read loop, when the decider can
        apply the event at once (:meth:`Decider.try_apply`); None otherwise."""
        info = translate.view_info(request, kind_of=self.kind_of)
        decided = self.decider.try_apply(node.ContainerCreated(info))
        if decided is None:
            return None
        return self._encode_created(info, decided.reply)

    def _encode_created(self, info: ContainerInfo, reply: node.Effect | None) -> bytes:
        """The encoded answer to a creation, or :class:`ContainerRejectedError`."""
        if isinstance(reply, node.RejectContainer):
            _log.warning("rejected %s: %s", info, reply.reason)
            raise ContainerRejectedError(reply.reason)
        if not isinstance(reply, node.AdjustContainer):
            raise ContainerRejectedError(f"{info}: the policy gave no answer")
        memory = reply.memory
        if memory.mems or memory.hugepage_limits:
            # Memory placement is per claim, not worth caching: encode this answer whole.
            response = translate.create_response(
                reply.cpus,
                reply.updates,
                mems=memory.mems_text,
                hugepage_limits=memory.hugepage_limits,
            )
            return bytes(response)
        return self._encoder.create_response(reply.cpus, reply.updates)

    async def update_container(
        self, pod: api.PodSandbox, container: api.Container, resources: api.LinuxResources | None
    ) -> Sequence[api.ContainerUpdate]:
        """A CRI resource update: the reply re-asserts the policy's cpuset (overriding the CRI's).

        A container not seen before (created while dracpu was away) is placed as a creation
        would be. Cancellation: a queued event is still applied.
        """
        info = translate.container_info(translate.pod_info(pod), container, kind_of=self.kind_of)
        reply = await self.decider.apply(node.ContainerUpdating(info))
        if not isinstance(reply, node.ReplyUpdate):
            return []
        return translate.to_updates(reply.updates)

    async def stop_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> Sequence[api.ContainerUpdate]:
        """The container stopped: it no longer consumes its claim. Cancellation: applied."""
        await self.decider.apply(node.ContainerRemoved(container.id))
        return []

    async def state_changed(
        self, event: api.Event, pod: api.PodSandbox | None, container: api.Container | None
    ) -> None:
        """RemoveContainer forgets the container; other notifications are ignored."""
        if event == api.Event.REMOVE_CONTAINER and container is not None:
            await self.decider.apply(node.ContainerRemoved(container.id))


class _Plugin(Protocol):
    @property
    def connected(self) -> bool: ...

    async def update_containers(
        self,
        updates: Sequence[api.ContainerUpdate],
        *,
        timeout: float = ...,  # noqa: ASYNC109 (NriPlugin.update_containers signature)
    ) -> list[api.ContainerUpdate]: ...


class ContainerUpdater:
    """Sends the state owner's ``UpdateContainers`` effects to the runtime, outside any NRI
    request (the runtime would deadlock if a handler awaited it).

    :meth:`submit` is synchronous and never blocks (the owner calls it between effects); the
    :meth:`run` task sends. Only the newest cpuset per container matters, so pending updates
    are merged. When NRI is not connected the updates are dropped: the next Synchronize
    re-asserts every container.
    """

    def __init__(self, plugin: _Plugin) -> None:
        self.plugin = plugin
        self._pending: dict[str, ContainerUpdate] = {}
        self._wake = trio.Event()
        self.sent = 0

    def submit(self, effect: node.UpdateContainers) -> None:
        """Queue ``effect``'s updates (latest per container wins)."""
        for update in effect.updates:
            self._pending[update.container_id] = update
        self._wake.set()

    async def run(self) -> None:
        """Send pending updates until cancelled.

        Cancellation: pending updates stay queued; an update in flight may or may not be
        applied by the runtime (re-sending it is harmless).
        """
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if not self._pending:
                continue
            batch, self._pending = self._pending, {}
            if not self.plugin.connected:
                _log.info("NRI not connected: %d update(s) left to the next sync", len(batch))
                continue
            updates = [translate.to_update(u) for _, u in sorted(batch.items())]
            try:
                failed = await self.plugin.update_containers(updates)
            except (RpcStatusError, ConnectionClosedError) as exc:
                _log.warning("NRI UpdateContainers of %d container(s): %s", len(updates), exc)
                continue
            self.sent += len(updates)
            if failed:
                _log.warning(
                    "NRI UpdateContainers failed for %s",
                    ", ".join(u.container_id for u in failed),
                )


def _where(info: ContainerInfo) -> dict[str, object]:
    """Log fields of a container line: its pod and name (the claim is in the message)."""
    return fields(pod=str(info.pod), container=info.name)
