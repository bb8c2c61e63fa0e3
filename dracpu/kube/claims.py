"""ResourceClaims for prepare: a watch-fed cache of claims allocated to this node.

:class:`ClaimCache` watches ResourceClaims in all namespaces and keeps those allocated to this
node (an allocation result for our driver whose pool is the node's pool, or an allocation
``nodeSelector`` naming the node via ``matchFields metadata.name``). :meth:`ClaimCache.get`
answers from the cache when the UID matches, and otherwise GETs the claim (a claim allocated a
moment ago may not have arrived through the watch yet), checking its UID and allocation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from dracpu import DRIVER_NAME
from dracpu.kube.client import JSON, KubeClient
from dracpu.kube.errors import ClaimMismatchError
from dracpu.kube.resources import RESOURCE_CLAIMS
from dracpu.kube.watch import Reflector

__all__ = ["ClaimCache", "allocated_to_node", "check_claim"]


def _selector_names_node(selector: object, node: str) -> bool:
    if not isinstance(selector, Mapping):
        return False
    for term in selector.get("nodeSelectorTerms") or []:
        if not isinstance(term, Mapping):
            continue
        for req in term.get("matchFields") or []:
            if (
                isinstance(req, Mapping)
                and req.get("key") == "metadata.name"
                and req.get("operator") == "In"
                and node in (req.get("values") or [])
            ):
                return True
    return False


def allocated_to_node(claim: Mapping[str, Any], *, node: str, driver: str, pool: str) -> bool:
    """Whether the claim's allocation has devices of ``driver`` on this node."""
    allocation = (claim.get("status") or {}).get("allocation")
    if not isinstance(allocation, Mapping):
        return False
    results = (allocation.get("devices") or {}).get("results") or []
    ours = [r for r in results if isinstance(r, Mapping) and r.get("driver") == driver]
    if not ours:
        return False
    if any(r.get("pool") == pool for r in ours):
        return True
    return _selector_names_node(allocation.get("nodeSelector"), node)


def check_claim(claim: Mapping[str, Any], *, namespace: str, name: str, uid: str) -> None:
    """Raise :class:`ClaimMismatchError` unless ``claim`` has this UID and is allocated."""
    actual = str((claim.get("metadata") or {}).get("uid", ""))
    where = f"{namespace}/{name}"
    if actual != uid:
        raise ClaimMismatchError(
            f"got replaced (uid {actual!r}, kubelet asked for {uid!r})",
            claim=where,
            expected_uid=uid,
            actual_uid=actual,
        )
    if not isinstance((claim.get("status") or {}).get("allocation"), Mapping):
        raise ClaimMismatchError("not allocated", claim=where, expected_uid=uid, actual_uid=actual)


class ClaimCache:
    """Claims allocated to this node, kept current by a watch; GET fallback on a miss.

    ``hits``/``misses`` count answers served from the cache and by a GET.
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        node_name: str,
        driver: str = DRIVER_NAME,
        pool_name: str | None = None,
    ) -> None:
        self.client = client
        self.node_name = node_name
        self.driver = driver
        self.pool_name = pool_name or node_name
        self.hits = 0
        self.misses = 0
        self.reflector = Reflector(client, RESOURCE_CLAIMS, keep=self._relevant)

    def _relevant(self, claim: JSON) -> bool:
        return allocated_to_node(
            claim, node=self.node_name, driver=self.driver, pool=self.pool_name
        )

    async def run(self) -> NoReturn:
        """Watch claims until cancelled; never raises KubeApiError (see Reflector.run).

        Cancellation: stops at once; the cache keeps its contents.
        """
        await self.reflector.run()

    def cached(self, namespace: str, name: str) -> JSON | None:
        """The cached claim, or None (no I/O)."""
        return self.reflector.store.get(f"{namespace}/{name}")

    def claims(self) -> list[JSON]:
        """All cached claims allocated to this node."""
        return list(self.reflector.store.values())

    async def get(self, namespace: str, name: str, uid: str) -> JSON:
        """The claim ``namespace/name`` with this ``uid``, allocated; cache first, else a GET.

        Raises ClaimMismatchError (replaced or not allocated), NotFoundError or another
        KubeApiError from the GET. Cancellation: nothing to undo.
        """
        claim = self.cached(namespace, name)
        if claim is not None and (claim.get("metadata") or {}).get("uid") == uid:
            self.hits += 1
            return claim
        self.misses += 1
        claim = await self.client.get(RESOURCE_CLAIMS, name, namespace=namespace)
        check_claim(claim, namespace=namespace, name=name, uid=uid)
        if self._relevant(claim):
            self.reflector.remember(claim)
        return claim
