"""Batch semantics of the DRA node service, independent of the wire version (pure functions).

The kubelet rejects a response that lacks a claim of the request ("skipped N ResourceClaims") or
that has a result for a claim it did not ask about, so a handler's answer is normalised here:
missing claims become per-claim errors, unknown UIDs are dropped (and logged by the caller).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from dracpu.kubelet.handler import ClaimFailed, ClaimRef

R = TypeVar("R")


def complete_results(
    claims: Sequence[ClaimRef], results: Mapping[str, R | ClaimFailed], operation: str
) -> tuple[dict[str, R | ClaimFailed], list[str]]:
    """Return exactly one result per requested claim UID, and the UIDs that were not requested.

    A claim the handler left out gets a :class:`ClaimFailed` naming the claim and ``operation``.
    """
    complete: dict[str, R | ClaimFailed] = {}
    for claim in claims:
        result = results.get(claim.uid)
        if result is None:
            result = ClaimFailed(
                f"{operation}: no result from the driver for ResourceClaim "
                f"{claim.namespace}/{claim.name} (uid {claim.uid})"
            )
        complete[claim.uid] = result
    unknown = sorted(uid for uid in results if uid not in complete)
    return complete, unknown


def fail_all(claims: Sequence[ClaimRef], error: str) -> dict[str, ClaimFailed]:
    """Fail every claim of a batch with the same error message."""
    return {claim.uid: ClaimFailed(error) for claim in claims}
