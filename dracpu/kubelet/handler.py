"""What the kubelet-facing servers need from the driver: the claim handler interface.

The DRA node service exists in two gRPC versions (``v1`` and ``v1beta1``); both translate their
wire messages into the plain dataclasses below and call the one :class:`ClaimHandler`. No
generated protobuf type crosses this boundary.

The kubelet batches claims (one call per pod and driver) and requires exactly one result per
claim UID in the request. A handler returns a result per claim; a claim it leaves out, and every
claim of a batch whose handler call raised, is reported to the kubelet as a per-claim error by the
service (see :mod:`dracpu.kubelet.claims`), so one bad claim never hides the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ClaimRef:
    """A ResourceClaim as the kubelet names it in prepare/unprepare requests."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    """One allocated device made ready for a claim.

    ``request_names`` are the claim's base request names this device serves (empty = all);
    ``cdi_device_ids`` are fully qualified CDI device IDs (``vendor/class=name``); ``share_id``
    is the allocation result's ``shareID`` for consumable capacity (dropped on v1beta1, which has
    no such field).
    """

    pool_name: str
    device_name: str
    request_names: tuple[str, ...] = ()
    cdi_device_ids: tuple[str, ...] = ()
    share_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimPrepared:
    """The claim is prepared; these are its devices on this node."""

    devices: tuple[PreparedDevice, ...] = ()


@dataclass(frozen=True, slots=True)
class ClaimUnprepared:
    """The claim is unprepared (or was never prepared: unprepare is idempotent)."""


@dataclass(frozen=True, slots=True)
class ClaimFailed:
    """The claim could not be (un)prepared; ``error`` is shown to users in pod events."""

    error: str


PrepareResult = ClaimPrepared | ClaimFailed
UnprepareResult = ClaimUnprepared | ClaimFailed


class ClaimHandler(Protocol):
    """Prepares and unprepares batches of claims for the kubelet (trio code).

    Both methods receive every claim of one kubelet call and return a mapping from claim UID to
    that claim's result. Both must be idempotent: the kubelet retries after timeouts and restarts,
    and unprepare must succeed for claims that are not prepared. Raising fails every claim of the
    batch with the exception's message. By default calls are serialized (one at a time) by the
    service, like the upstream Go helper does.

    Cancellation: the kubelet's deadline (45 s) or the plugin stopping cancels the call; the
    handler sees ``trio.Cancelled`` and should leave its state consistent.
    """

    async def prepare(self, claims: Sequence[ClaimRef]) -> Mapping[str, PrepareResult]:
        """Prepare ``claims``; return one result per claim UID."""
        ...

    async def unprepare(self, claims: Sequence[ClaimRef]) -> Mapping[str, UnprepareResult]:
        """Unprepare ``claims``; return one result per claim UID."""
        ...
