"""Show users their CPUs: write ``status.devices[]`` of prepared ResourceClaims.

The owner hands each ``WriteClaimStatus`` effect to :meth:`ClaimStatusWriter.submit` (no I/O,
never blocks); :meth:`ClaimStatusWriter.run` writes them in the background, after the kubelet got
its reply, so the API round trips stay off the prepare path. Each write takes the claim from the
watch cache (``lookup``; a GET when absent or when the PUT conflicts), keeps
the ``status.devices`` entries of other drivers, replaces ours and PUTs the status with that
``resourceVersion``; a conflict re-reads, a vanished or replaced claim is dropped, other errors
retry with the shared backoff. Writing the same entries twice changes nothing (replay-safe).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn

import trio

from dracpu import DRIVER_NAME
from dracpu.backoff import Backoff
from dracpu.core import node
from dracpu.errors import KubeApiError
from dracpu.kube.client import JSON, KubeClient
from dracpu.kube.errors import ConflictError, NotFoundError
from dracpu.kube.resources import RESOURCE_CLAIMS

__all__ = ["ClaimStatusWriter"]

_log = logging.getLogger(__name__)


class ClaimStatusWriter:
    """Background writer of claim device status (see the module docstring).

    ``written``/``failed`` count finished writes and dropped ones.
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        driver: str = DRIVER_NAME,
        backoff: Backoff | None = None,
        lookup: Callable[[str, str], JSON | None] = lambda namespace, name: None,
    ) -> None:
        self.client = client
        self.lookup = lookup
        self.driver = driver
        self.backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self.written = 0
        self.failed = 0
        self._pending: dict[str, node.WriteClaimStatus] = {}
        self._wake = trio.Event()

    @property
    def pending(self) -> int:
        """Claims whose status is not written yet."""
        return len(self._pending)

    def submit(self, effect: node.WriteClaimStatus) -> None:
        """Queue a status write (the latest per claim UID wins). No I/O."""
        self._pending[effect.claim.uid] = effect
        self._wake.set()

    async def run(self) -> NoReturn:
        """Write queued statuses until cancelled; never raises KubeApiError.

        Cancellation: stops at once; a write in flight may or may not have been applied, and
        the claim stays queued for the next run (the write is idempotent).
        """
        retries = self.backoff.counter()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            for uid, effect in list(self._pending.items()):
                try:
                    await self._write(effect)
                except KubeApiError as exc:
                    delay = retries.next_delay()
                    level = logging.WARNING if retries.attempt in (1, 5) else logging.DEBUG
                    _log.log(
                        level, "claim status of %s: %s; retry in %.1fs", effect.claim, exc, delay
                    )
                    await trio.sleep(delay)
                    self._wake.set()
                    break
                retries.reset()
                if self._pending.get(uid) is effect:
                    del self._pending[uid]

    async def _write(self, effect: node.WriteClaimStatus) -> None:
        ref = effect.claim
        cached = self.lookup(ref.namespace, ref.name)
        for attempt in range(5):
            if attempt == 0 and cached is not None:
                claim = cached  # The watch cache's copy: no GET unless it turns out stale.
            else:
                try:
                    claim = await self.client.get(
                        RESOURCE_CLAIMS, ref.name, namespace=ref.namespace
                    )
                except NotFoundError:
                    self.failed += 1
                    return
            meta = claim.get("metadata") or {}
            if meta.get("uid") != ref.uid:
                self.failed += 1
                return
            status: dict[str, Any] = dict(claim.get("status") or {})
            others = [
                d
                for d in status.get("devices") or []
                if isinstance(d, dict) and d.get("driver") != self.driver
            ]
            devices = others + [dict(d) for d in effect.devices]
            if status.get("devices") == devices:
                self.written += 1
                return
            status["devices"] = devices
            body = {**claim, "status": status}  # Status PUT: the server keeps the spec.
            try:
                await self.client.update_status(RESOURCE_CLAIMS, body, namespace=ref.namespace)
            except ConflictError:
                continue
            except NotFoundError:
                self.failed += 1
                return
            self.written += 1
            return
        raise KubeApiError(f"claim {ref}: status kept conflicting with other writers")
