"""Enforcement in the daemon: the NRI plugin, or the cgroup fallback while NRI is unavailable.

Both enforcers ask the one state owner through :class:`OwnerDecider`, so they share one pure
policy and one node state. Modes (``--enforcement``):

- ``nri``: the NRI plugin only (it redials forever while the socket is absent);
- ``cgroups``: the cgroup fallback only (NRI disabled in the runtime, or not wanted);
- ``auto`` (default): the NRI plugin runs all the time; while it has not been connected for
  ``handover_grace`` seconds (socket absent, NRI disabled, runtime down) the cgroup fallback
  runs. When NRI connects, its Synchronize reconciles every container and the fallback stops;
  when NRI goes away again, the fallback starts with a full reconcile of the cgroup tree.

Container updates outside any runtime request (the owner's ``UpdateContainers``: pool widening
at unprepare or topology change) go to whichever enforcer is active.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NoReturn

import trio

from dracpu.backoff import Backoff
from dracpu.cgroups import CgroupEnforcer, CgroupTreeError, Driver, detect, detect_hugetlb
from dracpu.core import node
from dracpu.daemon.config import EnforcementMode
from dracpu.daemon.owner import Owner
from dracpu.errors import DracpuError
from dracpu.nri import NriPlugin
from dracpu.nri.policy import POLICY_EVENTS, ContainerUpdater, Decided, PolicyHandler

__all__ = ["Enforcement", "EnforcementMode", "OwnerDecider"]

_log = logging.getLogger("dracpu.enforcement")

RETRY = Backoff(initial=1.0, maximum=30.0)


class OwnerDecider:
    """The :class:`dracpu.nri.policy.Decider` of the daemon: events are queued to the state
    owner's task, which applies every transition (the kubelet's too) one group at a time, so
    none interleave, even while a checkpoint is being synced."""

    def __init__(self, owner: Owner) -> None:
        self.owner = owner

    @property
    def state(self) -> node.NodeState:
        """The owner's current state."""
        return self.owner.state

    async def apply(self, event: node.Event) -> node.Effect | None:
        """Apply ``event`` through the owner; raises :class:`DracpuError` when it could not be
        persisted. Cancellation: once queued, the event is applied; only the answer is lost."""
        applied = await self.owner.apply(event)
        if applied.error is not None:
            raise DracpuError(applied.error)
        return applied.reply

    def try_apply(self, event: node.Event) -> Decided | None:
        """Apply ``event`` in the calling task when the owner is idle and the event needs no
        checkpoint (:meth:`Owner.try_apply_now`); None otherwise."""
        applied = self.owner.try_apply_now(event)
        return None if applied is None else Decided(applied.reply)


class Enforcement:
    """Runs the enforcer(s) for ``mode``; see the module docstring."""

    def __init__(
        self,
        owner: Owner,
        *,
        mode: EnforcementMode = EnforcementMode.AUTO,
        nri_socket: Path = Path("/var/run/nri/nri.sock"),
        cgroup_mount: Path = Path("/sys/fs/cgroup"),
        cgroup_driver: Driver = Driver.CGROUPFS,
        kubelet_cgroup_root: str = "/",
        handover_grace: float = 2.0,
        plugin: NriPlugin | None = None,
    ) -> None:
        self.mode = mode
        self.decider = OwnerDecider(owner)
        self.plugin = plugin or NriPlugin(
            PolicyHandler(self.decider), socket_path=str(nri_socket), events=POLICY_EVENTS
        )
        self.updater = ContainerUpdater(self.plugin)
        self.cgroup_mount = cgroup_mount
        self.cgroup_driver = cgroup_driver
        self.kubelet_cgroup_root = kubelet_cgroup_root
        self.handover_grace = handover_grace
        self.fallback: CgroupEnforcer | None = None
        owner.on_containers = self.on_containers

    @property
    def active(self) -> str:
        """``nri``, ``cgroups`` or ``none``: who enforces right now."""
        if self.plugin.connected:
            return "nri"
        return "cgroups" if self.fallback is not None else "none"

    def on_containers(self, effect: node.Effect) -> None:
        """Owner hook: route ``UpdateContainers`` to the active enforcer (never blocks)."""
        if not isinstance(effect, node.UpdateContainers):
            return
        if self.fallback is not None and not self.plugin.connected:
            self.fallback.submit(effect)
        else:
            self.updater.submit(effect)

    async def run(self) -> NoReturn:
        """Enforce until cancelled.

        Cancellation: the NRI connection closes and the fallback stops watching; cpusets
        already written stay (the next start reconciles them).
        """
        async with trio.open_nursery() as nursery:
            if self.mode is not EnforcementMode.CGROUPS:
                nursery.start_soon(self.plugin.run)
                nursery.start_soon(self.updater.run)
            if self.mode is not EnforcementMode.NRI:
                nursery.start_soon(self._fallback_loop)
            await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def _fallback_loop(self) -> NoReturn:
        retry = RETRY.counter()
        while True:
            if self.mode is EnforcementMode.AUTO:
                await self._nri_absent_for(self.handover_grace)
            try:
                tree = detect(self.cgroup_mount, self.cgroup_driver, self.kubelet_cgroup_root)
            except CgroupTreeError as exc:
                delay = retry.next_delay()
                _log.warning("cgroup fallback unavailable (%s); retrying in %.1f s", exc, delay)
                await trio.sleep(delay)
                continue
            retry.reset()
            _log.info(
                "NRI unavailable: enforcing through cgroup v%d at %s", tree.version, tree.root
            )
            hugetlb = detect_hugetlb(
                self.cgroup_mount, self.cgroup_driver, self.kubelet_cgroup_root
            )
            enforcer = CgroupEnforcer(tree, self.decider, hugetlb=hugetlb)
            async with trio.open_nursery() as nursery:
                await nursery.start(enforcer.run)
                self.fallback = enforcer
                try:
                    if self.mode is EnforcementMode.AUTO:
                        await self._nri_connected()
                        _log.info("NRI connected: handing enforcement over to it")
                    else:
                        await trio.sleep_forever()
                finally:
                    self.fallback = None
                    nursery.cancel_scope.cancel()

    async def _nri_absent_for(self, seconds: float) -> None:
        since = trio.current_time()
        while True:
            if self.plugin.connected:
                since = trio.current_time()
            elif trio.current_time() - since >= seconds:
                return
            await trio.sleep(0.1)

    async def _nri_connected(self) -> None:
        # The plugin has no connection event to wait on; its state is polled cheaply.
        while True:
            if self.plugin.connected:
                return
            await trio.sleep(0.1)
