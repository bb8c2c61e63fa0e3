"""An NriHandler for tests: a tiny, deterministic pinning rule plus a record of every call.

Rule: a container whose env has ``DRA_CPUSET_<claim>=<cpus>`` gets ``cpus`` as its cpuset; on
create, every *other* known container is told to use ``shared_cpus``. A container named
``slow`` makes create_container sleep ``slow_seconds``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from dracpu.nri import NriPlugin, RuntimeInfo
from generated.nri.pkg.api import v1alpha1 as api


def cpu_update(container_id: str, cpus: str) -> api.ContainerUpdate:
    """A ContainerUpdate that sets only the cpuset."""
    return api.ContainerUpdate(
        container_id=container_id,
        linux=api.LinuxContainerUpdate(resources=api.LinuxResources(cpu=api.LinuxCpu(cpus=cpus))),
    )


def exclusive_cpus(container: api.Container) -> str:
    """The cpuset the rule gives ``container`` ("" when it has no claim)."""
    for kv in container.env:
        key, _, value = kv.partition("=")
        if key.startswith("DRA_CPUSET_"):
            return value
    return ""


@dataclass
class RecordingHandler:
    """Implements dracpu.nri.NriHandler; see the module docstring."""

    shared_cpus: str = "0-1"
    touch_others: bool = True  # False: never update containers other than the one at hand
    slow_seconds: float = 0.0
    plugin: NriPlugin | None = None
    configured: list[RuntimeInfo] = field(default_factory=list)
    syncs: list[tuple[int, int]] = field(default_factory=list)
    known: dict[str, api.Container] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    synced: trio.Event = field(default_factory=trio.Event)

    async def configure(self, runtime: RuntimeInfo) -> None:
        self.configured.append(runtime)

    async def synchronize(
        self, pods: Sequence[api.PodSandbox], containers: Sequence[api.Container]
    ) -> Sequence[api.ContainerUpdate]:
        self.syncs.append((len(pods), len(containers)))
        self.known = {c.id: c for c in containers}
        self.synced.set()
        self.synced = trio.Event()
        if not self.touch_others:
            return []
        return [cpu_update(c.id, exclusive_cpus(c) or self.shared_cpus) for c in containers]

    async def create_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> api.CreateContainerResponse:
        self.calls.append(("create", container.id))
        if container.name == "slow":
            try:
                await trio.sleep(self.slow_seconds)
            except trio.Cancelled:
                self.cancelled.append(container.id)
                raise
        if container.name == "nested-update" and self.plugin is not None:
            try:
                await self.plugin.update_containers([cpu_update(container.id, "0")])
            except Exception as exc:
                self.errors.append(exc)
        others = [cpu_update(cid, self.shared_cpus) for cid in sorted(self.known)]
        if not self.touch_others:
            others = []
        self.known[container.id] = container
        adjust = api.ContainerAdjustment()
        if cpus := exclusive_cpus(container):
            adjust = api.ContainerAdjustment(
                linux=api.LinuxContainerAdjustment(
                    resources=api.LinuxResources(cpu=api.LinuxCpu(cpus=cpus))
                )
            )
        return api.CreateContainerResponse(adjust=adjust, update=others)

    async def update_container(
        self, pod: api.PodSandbox, container: api.Container, resources: api.LinuxResources | None
    ) -> Sequence[api.ContainerUpdate]:
        self.calls.append(("update", container.id))
        cpus = exclusive_cpus(self.known.get(container.id, container))
        return [cpu_update(container.id, cpus)] if cpus else []

    async def stop_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> Sequence[api.ContainerUpdate]:
        self.calls.append(("stop", container.id))
        self.known.pop(container.id, None)
        if not self.touch_others:
            return []
        return [cpu_update(cid, "0-3") for cid in sorted(self.known)]

    async def state_changed(
        self, event: api.Event, pod: api.PodSandbox | None, container: api.Container | None
    ) -> None:
        self.calls.append((event.name, container.id if container else (pod.id if pod else "")))
