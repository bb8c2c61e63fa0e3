"""The daemon's :class:`~dracpu.kubelet.handler.ClaimHandler`: kubelet batches -> the owner.

For a prepare batch, each claim comes from the watch-fed :class:`~dracpu.kube.ClaimCache` (a GET
when the watch has not delivered it yet), is parsed by :func:`dracpu.core.claims.parse_claim`,
and the whole batch goes to the owner as one ``Prepare`` event: one transition, one durable
checkpoint write. A claim that cannot be fetched or parsed fails alone, with a message naming it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import trio

from dracpu.core import claims as core_claims
from dracpu.core import node
from dracpu.daemon.owner import Owner
from dracpu.errors import DracpuError, shown
from dracpu.kube.errors import NotFoundError
from dracpu.kubelet import handler as kh

__all__ = ["ClaimSource", "DaemonClaimHandler"]

_log = logging.getLogger(__name__)


class ClaimSource(Protocol):
    """Where claims come from: :class:`dracpu.kube.ClaimCache` (or an in-memory stand-in)."""

    async def get(self, namespace: str, name: str, uid: str) -> dict[str, Any]:
        """The claim with this UID, allocated; raises KubeApiError subclasses otherwise."""
        ...


class DaemonClaimHandler:
    """Prepares and unprepares claims through the :class:`Owner` (see the module docstring)."""

    def __init__(self, owner: Owner, claims: ClaimSource, *, pool: str, driver: str) -> None:
        self.owner = owner
        self.claims = claims
        self.pool = pool
        self.driver = driver

    async def _fetch(self, ref: kh.ClaimRef) -> core_claims.Claim | str:
        bad = _bad_ref(ref)
        if bad:
            named = f"{shown(ref.namespace)}/{shown(ref.name)} (uid {shown(ref.uid)})"
            return f"ResourceClaim {named}: {bad}"
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
        if applied.error is not None:  # Nothing changed (the disk refused): every claim fails.
            return {c.uid: kh.ClaimFailed(applied.error) for c in claims}
        assert isinstance(applied.reply, node.ReplyPrepare)
        out: dict[str, kh.PrepareResult] = {}
        for uid, outcome in applied.reply.results.items():
            if isinstance(outcome, node.ClaimFailed):
                _log.warning("prepare failed: %s", outcome.error)
                out[uid] = kh.ClaimFailed(outcome.error)
            else:
                out[uid] = kh.ClaimPrepared(_devices(outcome, fetched.get(uid)))
        return out

    async def unprepare(self, claims: Sequence[kh.ClaimRef]) -> Mapping[str, kh.UnprepareResult]:
        """Release one kubelet batch; unknown claims succeed.

        Cancellation: as :meth:`prepare`; a retry finds the claims already released.
        """
        refs = tuple(core_claims.ClaimRef(c.namespace, c.name, c.uid) for c in claims)
        applied = await self.owner.apply(node.Unprepare(refs))
        if applied.error is not None:  # Nothing released: every claim fails, retried later.
            return {c.uid: kh.ClaimFailed(applied.error) for c in claims}
        assert isinstance(applied.reply, node.ReplyUnprepare)
        return {
            uid: kh.ClaimFailed(o.error)
            if isinstance(o, node.ClaimFailed)
            else kh.ClaimUnprepared()
            for uid, o in applied.reply.results.items()
        }


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,127}")


def _bad_ref(ref: kh.ClaimRef) -> str:
    """Why the kubelet's claim reference cannot name a ResourceClaim ("" if it can): checked
    before any API call, so a malformed one fails alone and never reaches a URL."""
    if not _DNS_LABEL.fullmatch(ref.namespace):
        return "the namespace is not a DNS label"
    if not _DNS_SUBDOMAIN.fullmatch(ref.name):
        return "the name is not a DNS subdomain of at most 253 characters"
    if not _UID.fullmatch(ref.uid):
        return "the UID is not a UID (letters, digits and '-', at most 128)"
    return ""


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
