"""The daemon's :class:`~dracpu.kubelet.handler.ClaimHandler`: kubelet batches -> the owner.

For a prepare batch, each claim comes from the watch-fed :class:`~dracpu.kube.ClaimCache` (a GET
when the watch has not delivered it yet), is parsed by :func:`dracpu.core.claims.parse_claim`,
and the whole batch goes to the owner as one ``Prepare`` event: one transition, one durable
checkpoint write. A claim that cannot be fetched or parsed fails alone, with a message naming it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import trio

from dracpu.core import claims as core_claims
from dracpu.core import node
from dracpu.daemon.owner import Owner
from dracpu.errors import DracpuError
from dracpu.kube.errors import NotFoundError
from dracpu.kubelet import handler as kh
from dracpu.logs import fields
from dracpu.ops.metrics import DriverMetrics, Result

__all__ = ["ClaimSource", "DaemonClaimHandler"]

_log = logging.getLogger(__name__)


class ClaimSource(Protocol):
    """Where claims come from: :class:`dracpu.kube.ClaimCache` (or an in-memory stand-in)."""

    async def get(self, namespace: str, name: str, uid: str) -> dict[str, Any]:
        """The claim with this UID, allocated; raises KubeApiError subclasses otherwise."""
        ...


class DaemonClaimHandler:
    """Prepares and unprepares claims through the :class:`Owner` (see the module docstring)."""

    def __init__(
        self,
        owner: Owner,
        claims: ClaimSource,
        *,
        pool: str,
        driver: str,
        metrics: DriverMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        """Per-claim results, durations and CPU counts are recorded here when set."""
        self.owner = owner
        self.claims = claims
        self.pool = pool
        self.driver = driver

    async def _fetch(self, ref: kh.ClaimRef) -> core_claims.Claim | str:
        where = f"ResourceClaim {ref.namespace}/{ref.name} (uid {ref.uid})"
        try:
            obj = await self.claims.get(ref.namespace, ref.name, ref.uid)
        except NotFoundError:
            return f"{where}: not found in the API"
        except DracpuError as exc:
            return f"{where}: {exc}"
        try:
            return core_claims.parse_claim(obj, pool=self.pool, driver=self.driver)
        except DracpuError as exc:
            return str(exc)

    async def prepare(self, claims: Sequence[kh.ClaimRef]) -> Mapping[str, kh.PrepareResult]:
        """Fetch, parse and prepare one kubelet batch; one result per claim UID.

        Cancellation: a cancel while fetching prepares nothing; once the batch reached the
        owner it is applied in full (see :meth:`Owner.apply`); a retry gets the same CPUs.
        """
        began = time.perf_counter()
        held_before = {c.uid for c in claims if c.uid in self.owner.state.claims}
        fetched: dict[str, core_claims.Claim | str] = {}
        if len(claims) == 1:
            fetched[claims[0].uid] = await self._fetch(claims[0])
        else:

            async def one(ref: kh.ClaimRef) -> None:
                fetched[ref.uid] = await self._fetch(ref)

            async with trio.open_nursery() as nursery:
                for ref in claims:
                    nursery.start_soon(one, ref)
        refs = tuple(core_claims.ClaimRef(c.namespace, c.name, c.uid) for c in claims)
        applied = await self.owner.apply(node.Prepare(refs, fetched))
        seconds = time.perf_counter() - began
        if applied.error is not None:
            if self.metrics is not None:
                for _ in refs:
                    self.metrics.record_prepare(Result.ERROR, seconds)
            raise DracpuError(applied.error)
        assert isinstance(applied.reply, node.ReplyPrepare)
        names = {c.uid: c for c in claims}
        out: dict[str, kh.PrepareResult] = {}
        for uid, outcome in applied.reply.results.items():
            asked = names.get(uid)
            where = fields(claim=uid, name=_name_of(asked))
            if isinstance(outcome, node.ClaimFailed):
                _log.warning("prepare failed: %s", outcome.error, extra=where)
                out[uid] = kh.ClaimFailed(outcome.error)
                if self.metrics is not None:
                    self.metrics.record_prepare(Result.ERROR, seconds)
            else:
                _log.info("claim prepared with CPUs %s", outcome.claim.cpus, extra=where)
                out[uid] = kh.ClaimPrepared(_devices(outcome, fetched.get(uid)))
                if self.metrics is not None:
                    new = uid not in held_before
                    cpus = len(outcome.claim.cpus) if new else None
                    self.metrics.record_prepare(Result.SUCCESS, seconds, cpus)
        return out

    async def unprepare(self, claims: Sequence[kh.ClaimRef]) -> Mapping[str, kh.UnprepareResult]:
        """Release one kubelet batch; unknown claims succeed.

        Cancellation: as :meth:`prepare`; a retry finds the claims already released.
        """
        refs = tuple(core_claims.ClaimRef(c.namespace, c.name, c.uid) for c in claims)
        applied = await self.owner.apply(node.Unprepare(refs))
        if applied.error is not None:
            if self.metrics is not None:
                for _ in refs:
                    self.metrics.record_unprepare(Result.ERROR)
            raise DracpuError(applied.error)
        assert isinstance(applied.reply, node.ReplyUnprepare)
        out: dict[str, kh.UnprepareResult] = {}
        for uid, o in applied.reply.results.items():
            failed = isinstance(o, node.ClaimFailed)
            if isinstance(o, node.ClaimFailed):
                _log.warning("unprepare failed: %s", o.error, extra=fields(claim=uid))
                out[uid] = kh.ClaimFailed(o.error)
            else:
                _log.info("claim unprepared", extra=fields(claim=uid))
                out[uid] = kh.ClaimUnprepared()
            if self.metrics is not None:
                self.metrics.record_unprepare(Result.ERROR if failed else Result.SUCCESS)
        return out


def _name_of(ref: kh.ClaimRef | None) -> str | None:
    """The claim's ``namespace/name`` (the kubelet's request names the claim, not its pods)."""
    return f"{ref.namespace}/{ref.name}" if ref is not None else None


def _devices(
    outcome: node.ClaimPrepared, fetched: core_claims.Claim | str | None
) -> tuple[kh.PreparedDevice, ...]:
    """The kubelet's device list: one per allocation result of ours, each with the CDI ID."""
    ids = outcome.cdi_device_ids
    if outcome.claim.devices:
        return tuple(
            kh.PreparedDevice(
                pool_name=d.pool,
                device_name=d.device,
                request_names=(d.request,) if d.request else (),
                cdi_device_ids=ids,
                share_id=d.share_id,
            )
            for d in outcome.claim.devices
        )
    if isinstance(fetched, core_claims.Claim):
        # An adopted claim (no per-device record): report the API's results.
        return tuple(
            kh.PreparedDevice(
                pool_name=r.pool,
                device_name=r.device,
                request_names=(r.request,) if r.request else (),
                cdi_device_ids=ids,
                share_id=r.share_id,
            )
            for r in fetched.results
        )
    return ()
