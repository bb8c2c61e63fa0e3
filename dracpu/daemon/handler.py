"""The daemon's :class:`~dracpu.kubelet.handler.ClaimHandler`: kubelet batches -> the owner.

For a prepare batch, each claim comes from the watch-fed :class:`~dracpu.kube.ClaimCache` (a GET
when the watch has not delivered it yet), is parsed by :func:`dracpu.core.claims.parse_claim`,
and the whole batch goes to the owner as one ``Prepare`` event: one transition, one durable
checkpoint write. A claim that cannot be fetched or parsed fails alone, with a message naming it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import trio

from dracpu.core import claims as core_claims
from dracpu.core import node
from dracpu.core.device_metadata import POD_CLAIM_NAME_ANNOTATION, MetadataDevice
from dracpu.daemon.metadata import MetadataError, MetadataWriter
from dracpu.daemon.owner import Owner
from dracpu.errors import DracpuError, shown
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
        metadata: MetadataWriter | None = None,
        attributes_of: Callable[[str], Mapping[str, Mapping[str, Any]]] = lambda _: {},
    ) -> None:
        self.metadata = metadata
        """KEP-5304 device metadata files are written at prepare and removed at unprepare
        when set; ``attributes_of`` gives a device's published attributes for them."""
        self.attributes_of = attributes_of
        self.metrics = metrics
        """Per-claim results, durations and CPU counts are recorded here when set."""
        self.owner = owner
        self.claims = claims
        self.pool = pool
        self.driver = driver

    async def _fetch(
        self, ref: kh.ClaimRef, pod_claim_names: dict[str, str | None]
    ) -> core_claims.Claim | str:
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
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        pod_claim = annotations.get(POD_CLAIM_NAME_ANNOTATION)
        pod_claim_names[ref.uid] = pod_claim if isinstance(pod_claim, str) else None
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
        pod_claims: dict[str, str | None] = {}
        if len(claims) == 1:
            fetched[claims[0].uid] = await self._fetch(claims[0], pod_claims)
        else:

            async def one(ref: kh.ClaimRef) -> None:
                fetched[ref.uid] = await self._fetch(ref, pod_claims)

            async with trio.open_nursery() as nursery:
                for ref in claims:
                    nursery.start_soon(one, ref)
        refs = tuple(core_claims.ClaimRef(c.namespace, c.name, c.uid) for c in claims)
        applied = await self.owner.apply(node.Prepare(refs, fetched))
        seconds = time.perf_counter() - began
        if applied.error is not None:  # Nothing changed (the disk refused): every claim fails.
            if self.metrics is not None:
                for _ in refs:
                    self.metrics.record_prepare(Result.ERROR, seconds)
            return {c.uid: kh.ClaimFailed(applied.error) for c in claims}
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
                devices = _devices(outcome, fetched.get(uid))
                try:
                    devices = self._with_metadata(outcome, asked, pod_claims.get(uid), devices)
                except MetadataError as exc:
                    _log.error("prepare failed: %s", exc, extra=where)
                    out[uid] = kh.ClaimFailed(str(exc))
                    if self.metrics is not None:
                        self.metrics.record_prepare(Result.ERROR, seconds)
                    continue
                # The batch's wall time rides along, so load tests get exact per-claim
                # latencies (the upstream histogram's first bucket is 5 ms).
                _log.info(
                    "claim prepared with CPUs %s",
                    outcome.claim.cpus,
                    extra=fields(claim=uid, name=_name_of(asked), seconds=round(seconds, 6)),
                )
                out[uid] = kh.ClaimPrepared(devices)
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
        if applied.error is not None:  # Nothing released: every claim fails, retried later.
            if self.metrics is not None:
                for _ in refs:
                    self.metrics.record_unprepare(Result.ERROR)
            return {c.uid: kh.ClaimFailed(applied.error) for c in claims}
        assert isinstance(applied.reply, node.ReplyUnprepare)
        out: dict[str, kh.UnprepareResult] = {}
        asked = {c.uid: c for c in claims}
        for uid, o in applied.reply.results.items():
            ref = asked.get(uid)
            # Only a well-formed reference names a metadata directory (no path tricks).
            if (
                self.metadata is not None
                and ref is not None
                and not _bad_ref(ref)
                and not isinstance(o, node.ClaimFailed)
            ):
                try:
                    self.metadata.remove(namespace=ref.namespace, name=ref.name, uid=uid)
                except MetadataError as exc:
                    o = node.ClaimFailed(str(exc))
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

    def _with_metadata(
        self,
        outcome: node.ClaimPrepared,
        ref: kh.ClaimRef | None,
        pod_claim_name: str | None,
        devices: tuple[kh.PreparedDevice, ...],
    ) -> tuple[kh.PreparedDevice, ...]:
        """Write the claim's metadata files; each device gets its request's metadata CDI ID."""
        if self.metadata is None or ref is None or not outcome.claim.devices:
            return devices
        ids = self.metadata.write(
            namespace=ref.namespace,
            name=ref.name,
            uid=ref.uid,
            pod_claim_name=pod_claim_name,
            devices=[
                MetadataDevice(
                    request=d.request,
                    pool=d.pool,
                    device=d.device,
                    attributes=self.attributes_of(d.device),
                    allocated_cpus=len(d.cpus),
                )
                for d in outcome.claim.devices
            ],
        )
        out = []
        for dev in devices:
            base = dev.request_names[0].split("/", 1)[0] if dev.request_names else ""
            extra = ids.get(base)
            if extra is not None and extra not in dev.cdi_device_ids:
                dev = dataclasses.replace(dev, cdi_device_ids=(*dev.cdi_device_ids, extra))
            out.append(dev)
        return tuple(out)


def _name_of(ref: kh.ClaimRef | None) -> str | None:
    """The claim's ``namespace/name`` (the kubelet's request names the claim, not its pods)."""
    return f"{ref.namespace}/{ref.name}" if ref is not None else None


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
