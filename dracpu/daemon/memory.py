"""The ``dra.memory`` driver inside the daemon: a second kubelet plugin and slice publisher.

Enabled by ``--memory-driver`` (``enableMemoryDriver``). The same process then registers a second
driver with the kubelet (registration socket ``dra.memory-reg.sock``, plugin dir
``plugins/dra.memory``) and publishes the node's memory and hugepages as ``dra.memory``
ResourceSlices (pool = node name). Its claims are prepared through the same state
:class:`~dracpu.daemon.owner.Owner` as CPU claims, so both are durable in one write-ahead
checkpoint and the pinning policy sees both (``cpuset.mems``, hugetlb limits).

Its members (kubelet plugin, slice publisher, claim cache, restart recovery) join the daemon's
supervised group. Restart recovery releases memory claims held at start whose UID the claim
cache (claims allocated to this node for ``dra.memory``) no longer has once it listed, after the
release grace period: deleted or deallocated while the daemon was down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import trio

from dracpu.core import node
from dracpu.core.claims import ClaimRef
from dracpu.core.memory import DRIVER as MEMORY_DRIVER
from dracpu.core.memory import MemoryTopology
from dracpu.core.memory_claims import parse_memory_claim
from dracpu.core.memory_prepare import AllocatedMemory
from dracpu.core.memory_slices import MemorySliceOptions, build_memory_slice_specs
from dracpu.daemon.handler import ClaimSource
from dracpu.daemon.owner import Owner
from dracpu.errors import DracpuError
from dracpu.kube.claims import ClaimCache
from dracpu.kube.errors import NotFoundError
from dracpu.kube.publisher import SlicePublisher
from dracpu.kubelet import (
    HealthBoard,
    KubeletPluginConfig,
    RegistrationStatusBoard,
    serve_kubelet_plugin,
)
from dracpu.kubelet import handler as kh

__all__ = ["MEMORY_DRIVER", "MemoryClaimHandler", "MemoryDriver"]

_log = logging.getLogger("dracpu.memory")


class MemoryClaimHandler:
    """The :class:`~dracpu.kubelet.handler.ClaimHandler` of the ``dra.memory`` plugin."""

    def __init__(self, owner: Owner, claims: ClaimSource, *, driver: str = MEMORY_DRIVER) -> None:
        self.owner = owner
        self.claims = claims
        self.driver = driver

    async def _fetch(self, ref: kh.ClaimRef) -> tuple[AllocatedMemory, ...] | str:
        where = f"ResourceClaim {ref.namespace}/{ref.name} (uid {ref.uid})"
        try:
            obj = await self.claims.get(ref.namespace, ref.name, ref.uid)
        except NotFoundError:
            return f"{where}: not found in the API"
        except DracpuError as exc:
            return f"{where}: {exc}"
        try:
            got, results = parse_memory_claim(obj, driver=self.driver)
        except DracpuError as exc:
            return str(exc)
        if got.uid != ref.uid:
            return f"{where}: the API has uid {got.uid}; the claim was replaced"
        return results

    async def prepare(self, claims: Sequence[kh.ClaimRef]) -> Mapping[str, kh.PrepareResult]:
        """Fetch and prepare one kubelet batch; one result per claim UID.

        Cancellation: a cancel while fetching prepares nothing; once the batch reached the
        owner it is applied in full; a retry gets the same assignment.
        """
        fetched: dict[str, tuple[AllocatedMemory, ...] | str] = {}

        async def one(ref: kh.ClaimRef) -> None:
            fetched[ref.uid] = await self._fetch(ref)

        async with trio.open_nursery() as nursery:
            for ref in claims:
                nursery.start_soon(one, ref)
        refs = tuple(ClaimRef(c.namespace, c.name, c.uid) for c in claims)
        applied = await self.owner.apply(node.PrepareMemory(refs, fetched))
        if applied.error is not None:
            raise DracpuError(applied.error)
        assert isinstance(applied.reply, node.ReplyPrepareMemory)
        out: dict[str, kh.PrepareResult] = {}
        for uid, outcome in applied.reply.results.items():
            if isinstance(outcome, node.ClaimFailed):
                _log.warning("memory prepare failed: %s", outcome.error)
                out[uid] = kh.ClaimFailed(outcome.error)
                continue
            out[uid] = kh.ClaimPrepared(
                tuple(
                    kh.PreparedDevice(
                        pool_name=self.owner.state.config.pool,
                        device_name=g.device,
                        request_names=(g.request,),
                        cdi_device_ids=outcome.cdi_device_ids,
                    )
                    for g in outcome.assignment.grants
                )
            )
        return out

    async def unprepare(self, claims: Sequence[kh.ClaimRef]) -> Mapping[str, kh.UnprepareResult]:
        """Release one kubelet batch; unknown claims succeed. Cancellation: as :meth:`prepare`."""
        refs = tuple(ClaimRef(c.namespace, c.name, c.uid) for c in claims)
        applied = await self.owner.apply(node.UnprepareMemory(refs))
        if applied.error is not None:
            raise DracpuError(applied.error)
        assert isinstance(applied.reply, node.ReplyUnprepare)
        return {
            uid: kh.ClaimFailed(o.error)
            if isinstance(o, node.ClaimFailed)
            else kh.ClaimUnprepared()
            for uid, o in applied.reply.results.items()
        }


@dataclass
class MemoryDriver:
    """The memory driver's parts: publisher, claim cache, kubelet plugin configuration."""

    topology: MemoryTopology
    node_name: str
    publisher: SlicePublisher
    cache: ClaimCache
    plugin_config: KubeletPluginConfig
    registration: RegistrationStatusBoard = field(default_factory=RegistrationStatusBoard)
    health: HealthBoard = field(default_factory=HealthBoard)
    start_claims: tuple[str, ...] = ()
    """Memory claim UIDs held at start: what restart recovery checks."""
    release_grace_period: float = 60.0
    started_at: float = field(default_factory=time.monotonic)
    released_at_start: tuple[str, ...] = ()
    recovery_done: bool = False

    def slice_specs(self) -> list[dict[str, Any]]:
        """The desired ``dra.memory`` ResourceSlice specs."""
        return build_memory_slice_specs(self.topology, MemorySliceOptions(self.node_name))

    def members(self, owner: Owner) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
        """The supervised group's members for the memory driver."""
        config = self.plugin_config

        async def kubelet() -> None:
            await serve_kubelet_plugin(
                config,
                MemoryClaimHandler(owner, self.cache, driver=config.driver_name),
                self.health,
                registration=self.registration,
            )

        async def recover() -> NoReturn:
            await self.recover(owner)

        return [
            ("memory kubelet plugin", kubelet),
            ("memory slice publisher", self.publisher.run),
            ("memory claim cache", self.cache.run),
            ("memory restart recovery", recover),
        ]

    async def recover(self, owner: Owner) -> NoReturn:
        """Release start-time memory claims the API no longer allocates here (module docs),
        once per process. Cancellation: a release in flight completes in the owner."""
        if not self.recovery_done:
            wait = self.release_grace_period - (time.monotonic() - self.started_at)
            await trio.sleep(max(wait, 0.0))
            await self.cache.reflector.synced.wait()
            known = {(c.get("metadata") or {}).get("uid") for c in self.cache.claims()}
            gone = [
                uid for uid in self.start_claims if uid in owner.state.memory and uid not in known
            ]
            if gone:
                _log.info(
                    "releasing %d memory claim(s) gone from the API while dracpu was down: %s",
                    len(gone),
                    ", ".join(gone),
                )
                await owner.apply(node.UnprepareMemory(tuple(ClaimRef("", "", u) for u in gone)))
            self.released_at_start = tuple(gone)
            self.recovery_done = True
        await trio.sleep_forever()
