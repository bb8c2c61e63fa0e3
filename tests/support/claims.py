"""ResourceClaim JSON and node-state helpers for core tests and bench/ (no I/O).

``claim_json(uid, results, config)`` builds a ``resource.k8s.io/v1`` ResourceClaim as the API
returns it; ``grouped(device, cpus)`` / ``individual(device)`` build allocation results;
``prepare(state, *claims)`` runs one Prepare event for parsed claims and returns the new state,
the effects and the per-claim outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dracpu.core.claims import Claim, ClaimRef, parse_claim
from dracpu.core.node import (
    Effect,
    NodeState,
    Prepare,
    PrepareOutcome,
    ReplyPrepare,
    step,
)

POOL = "node-1"


def grouped(device: str, cpus: int | str, request: str = "req", share: str = "") -> dict[str, Any]:
    """A consumable-capacity allocation result of ``dra.cpu``."""
    result: dict[str, Any] = {
        "request": request,
        "driver": "dra.cpu",
        "pool": POOL,
        "device": device,
        "consumedCapacity": {"dra.cpu/cpu": str(cpus)},
    }
    if share:
        result["shareID"] = share
    return result


def individual(device: str, request: str = "req") -> dict[str, Any]:
    """An individual-mode allocation result (one ``cpudevNNN``)."""
    return {"request": request, "driver": "dra.cpu", "pool": POOL, "device": device}


def cpuset_config(cpuset: str, request: str = "req", **extra: Any) -> dict[str, Any]:
    """A per-request v1alpha1 opaque config entry."""
    return {
        "source": "FromClaim",
        "requests": [request],
        "opaque": {
            "driver": "dra.cpu",
            "parameters": {"apiVersion": "v1alpha1", "cpuConfig": {"cpuset": cpuset, **extra}},
        },
    }


def claim_json(
    uid: str,
    results: list[dict[str, Any]],
    config: list[dict[str, Any]] | None = None,
    *,
    namespace: str = "default",
    name: str | None = None,
) -> dict[str, Any]:
    """A ResourceClaim allocated with ``results`` (and opaque ``config``)."""
    devices: dict[str, Any] = {"results": results}
    if config:
        devices["config"] = config
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"namespace": namespace, "name": name or f"claim-{uid}", "uid": uid},
        "status": {"allocation": {"devices": devices}},
    }


def parsed(uid: str, results: list[dict[str, Any]], config: list[Any] | None = None) -> Claim:
    """``claim_json`` parsed for the test pool."""
    return parse_claim(claim_json(uid, results, config), pool=POOL)


def prepare(
    state: NodeState, *claims: Claim
) -> tuple[NodeState, tuple[Effect, ...], Mapping[str, PrepareOutcome]]:
    """One Prepare batch of ``claims``; returns (state, effects, outcomes by UID)."""
    refs = tuple(ClaimRef(c.namespace, c.name, c.uid) for c in claims)
    after, effects = step(state, Prepare(refs, {c.uid: c for c in claims}))
    reply = effects[-1]
    assert isinstance(reply, ReplyPrepare)
    return after, effects, reply.results
