"""The DRA node service (``DRAPlugin``) in its ``v1`` and ``v1beta1`` wire versions.

Both versions have the same two RPCs and nearly the same messages (``v1`` adds
``Device.share_id``). Each version is a thin grpclib service that converts its messages to the
dataclasses of :mod:`dracpu.kubelet.handler` and calls one shared :class:`ClaimDispatcher`,
which runs the trio :class:`~dracpu.kubelet.handler.ClaimHandler` and normalises its answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import grpclib
import grpclib.const
import trio

from dracpu.kubelet.claims import complete_results, fail_all
from dracpu.kubelet.handler import (
    ClaimFailed,
    ClaimHandler,
    ClaimPrepared,
    ClaimRef,
    PrepareResult,
    UnprepareResult,
)
from generated.k8s.io.kubelet.pkg.apis.dra import v1, v1beta1

_log = logging.getLogger(__name__)

R = TypeVar("R")

# The labels the kubelet understands in PluginInfo.supported_versions (not full service names).
V1_SERVICE_LABEL = "v1.DRAPlugin"
V1BETA1_SERVICE_LABEL = "v1beta1.DRAPlugin"


@dataclass(eq=False)
class _Job:
    """One handler call handed from the asyncio side to the dispatcher's trio worker."""

    call: Callable[[], Awaitable[dict[str, Any]]]
    future: asyncio.Future[dict[str, Any]]
    scope: trio.CancelScope | None = None


class ClaimDispatcher:
    """Calls the claim handler for both wire versions, bridging asyncio (grpclib) to trio.

    A trio worker (:meth:`run`, started before the DRA socket serves) takes calls from a queue;
    the grpclib side waits on an asyncio future. This is cheaper per call than starting a trio
    task through trio-asyncio for each RPC, and it serializes calls for free: with ``serialize``
    (the default, as in the upstream Go helper) calls run one at a time in arrival order;
    otherwise each runs in its own trio task and the handler must be safe for concurrent calls.
    """

    def __init__(self, handler: ClaimHandler, *, serialize: bool = True) -> None:
        self._handler = handler
        self._serialize = serialize
        self._send, self._receive = trio.open_memory_channel[_Job](math.inf)
        self._running = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Execute queued calls until cancelled (trio side; needs the trio-asyncio loop open).

        Cancellation: the running call and every queued call are cancelled; their asyncio
        callers get ``CancelledError``.
        """
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                async for job in self._receive:
                    if self._serialize:
                        await self._execute(job)
                    else:
                        nursery.start_soon(self._execute, job)
        finally:
            self._running = False
            while True:
                try:
                    job = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                job.future.cancel()

    async def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        """Prepare a batch (called from asyncio); one result per requested claim UID.

        Cancellation: cancelling the asyncio caller (kubelet deadline, connection lost, server
        stopping) cancels the trio handler call, or drops it if it has not started.
        """
        return await self._submit(
            partial(self._call, self._handler.prepare, claims, "NodePrepareResources")
        )

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, UnprepareResult]:
        """Unprepare a batch (called from asyncio); one result per requested claim UID.

        Cancellation: as for :meth:`prepare`.
        """
        return await self._submit(
            partial(self._call, self._handler.unprepare, claims, "NodeUnprepareResources")
        )

    async def _submit(self, call: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        if not self._running:
            raise grpclib.GRPCError(grpclib.const.Status.UNAVAILABLE, "plugin is stopping")
        job = _Job(call, asyncio.get_running_loop().create_future())
        self._send.send_nowait(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            if job.scope is not None:
                job.scope.cancel()
            raise

    async def _execute(self, job: _Job) -> None:
        if job.future.done():  # the caller gave up while the job was queued
            return
        try:
            with trio.CancelScope() as job.scope:
                result = await job.call()
            if not job.future.done():
                if job.scope.cancelled_caught:
                    job.future.cancel()
                else:
                    job.future.set_result(result)
        finally:
            if not job.future.done():  # the worker itself is being cancelled
                job.future.cancel()

    async def _call(
        self,
        method: Callable[[Sequence[ClaimRef]], Awaitable[Mapping[str, R | ClaimFailed]]],
        claims: Sequence[ClaimRef],
        operation: str,
    ) -> dict[str, R | ClaimFailed]:
        if not claims:
            return {}
        try:
            results = await method(claims)
        except Exception as exc:
            _log.exception("%s failed for %d claim(s)", operation, len(claims))
            return dict(fail_all(claims, f"{operation}: {exc}"))
        complete, unknown = complete_results(claims, results, operation)
        if unknown:
            _log.warning(
                "%s: driver returned results for unrequested claims %s", operation, unknown
            )
        return complete


def _claim_refs(message: Any) -> list[ClaimRef]:
    """The request's claims; a request whose ``claims`` are not Claim messages (the lenient
    decoder accepts a wrong wire type as a list of numbers) is refused with INVALID_ARGUMENT."""
    refs = []
    for index, c in enumerate(message.claims):
        namespace, name, uid = (getattr(c, f, None) for f in ("namespace", "name", "uid"))
        if not (isinstance(namespace, str) and isinstance(name, str) and isinstance(uid, str)):
            raise grpclib.GRPCError(
                grpclib.const.Status.INVALID_ARGUMENT,
                f"malformed request: claims[{index}] is not a Claim message",
            )
        refs.append(ClaimRef(namespace=namespace, name=name, uid=uid))
    return refs


def _log_failures(operation: str, results: Mapping[str, object]) -> None:
    for uid, result in results.items():
        if isinstance(result, ClaimFailed):
            _log.warning("%s: claim %s failed: %s", operation, uid, result.error)


class _DraService:
    """The DRAPlugin service for one generated API version (``_api``): every version delegates
    to the same :class:`ClaimDispatcher`; only the message module and ``share_id`` differ."""

    _api: Any
    _has_share_id: bool

    def __init__(self, dispatcher: ClaimDispatcher) -> None:
        self._dispatcher = dispatcher

    async def node_prepare_resources(self, message: Any) -> Any:
        """Prepare the request's claims. Cancellation: cancels the handler call."""
        api = self._api
        results = await self._dispatcher.prepare(_claim_refs(message))
        _log_failures("NodePrepareResources", results)
        claims = {}
        for uid, result in results.items():
            if isinstance(result, ClaimFailed):
                claims[uid] = api.NodePrepareResourceResponse(error=result.error)
            else:
                claims[uid] = api.NodePrepareResourceResponse(devices=self._devices(result))
        return api.NodePrepareResourcesResponse(claims=claims)

    async def node_unprepare_resources(self, message: Any) -> Any:
        """Unprepare the request's claims. Cancellation: cancels the handler call."""
        api = self._api
        results = await self._dispatcher.unprepare(_claim_refs(message))
        _log_failures("NodeUnprepareResources", results)
        return api.NodeUnprepareResourcesResponse(
            claims={
                uid: api.NodeUnprepareResourceResponse(
                    error=result.error if isinstance(result, ClaimFailed) else ""
                )
                for uid, result in results.items()
            }
        )

    def _devices(self, result: ClaimPrepared) -> list[Any]:
        devices = []
        for d in result.devices:
            fields: dict[str, Any] = {
                "request_names": list(d.request_names),
                "pool_name": d.pool_name,
                "device_name": d.device_name,
                "cdi_device_ids": list(d.cdi_device_ids),
            }
            if self._has_share_id:
                fields["share_id"] = d.share_id
            devices.append(self._api.Device(**fields))
        return devices


class DraPluginV1(_DraService, v1.DraPluginBase):  # type: ignore[misc]  # generated code is untyped
    """``k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin``, delegating to a :class:`ClaimDispatcher`."""

    _api = v1
    _has_share_id = True


class DraPluginV1beta1(_DraService, v1beta1.DraPluginBase):  # type: ignore[misc]  # generated code is untyped
    """``k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin`` (no ``share_id``), same dispatcher."""

    _api = v1beta1
    _has_share_id = False
