"""Read a ResourceClaim's ``dra.memory`` allocation results (pure).

The kubelet names a claim; the API object says which devices of ours it got and how much
``size`` each result consumes. Checks of the values themselves (pool, device, quantity,
capacity) are :func:`dracpu.core.memory_prepare.prepare_memory`'s, so every error there names
the claim and the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dracpu.core.claims import ClaimError, ClaimRef
from dracpu.core.memory import DRIVER
from dracpu.core.memory_prepare import AllocatedMemory

__all__ = ["parse_memory_claim"]


def parse_memory_claim(
    obj: Mapping[str, Any], *, driver: str = DRIVER
) -> tuple[ClaimRef, tuple[AllocatedMemory, ...]]:
    """The claim's reference and its allocation results for ``driver``, in order.

    Raises :class:`ClaimError` naming the claim when it is not allocated or a field is not of
    the API's type.
    """
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        raise ClaimError("metadata is missing", claim="?")
    uid = metadata.get("uid")
    where = f"{metadata.get('namespace') or ''}/{metadata.get('name') or '?'}"
    if not isinstance(uid, str) or not uid:
        raise ClaimError("metadata.uid is missing", claim=where)
    ref = ClaimRef(str(metadata.get("namespace") or ""), str(metadata.get("name") or ""), uid)
    label = str(ref)
    status = obj.get("status")
    allocation = status.get("allocation") if isinstance(status, Mapping) else None
    if not isinstance(allocation, Mapping):
        raise ClaimError("not allocated (status.allocation is missing)", claim=label)
    devices = allocation.get("devices") or {}
    raw = devices.get("results") if isinstance(devices, Mapping) else None
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ClaimError("status.allocation.devices.results is not a list", claim=label)
    out: list[AllocatedMemory] = []
    for index, result in enumerate(raw):
        if not isinstance(result, Mapping):
            raise ClaimError(f"devices.results[{index}] is not an object: {result!r}", claim=label)
        if result.get("driver") != driver:
            continue
        fields = {k: result.get(k) for k in ("request", "pool", "device")}
        for key, value in fields.items():
            if not isinstance(value, str) or not value:
                raise ClaimError(
                    f"devices.results[{index}].{key} is not a name: {value!r}", claim=label
                )
        consumed = result.get("consumedCapacity") or {}
        if not isinstance(consumed, Mapping):
            raise ClaimError(
                f"devices.results[{index}].consumedCapacity is not an object: {consumed!r}",
                claim=label,
            )
        out.append(
            AllocatedMemory(
                request=str(fields["request"]),
                pool=str(fields["pool"]),
                device=str(fields["device"]),
                consumed={str(k): str(v) for k, v in consumed.items()},
            )
        )
    return ref, tuple(out)
