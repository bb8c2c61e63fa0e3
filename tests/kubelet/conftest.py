"""Fixtures for the kubelet boundary: a running plugin on real unix sockets and grpcio stubs.

grpcio (the C-core gRPC implementation the kubelet's grpc-go peers with in spirit: independent of
grpclib) plays the kubelet. Its stubs are compiled at test time from protos/. grpcio calls are
blocking, so tests run them in worker threads (``trio.to_thread``) while trio serves.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import grpc
import pytest
import trio

from dracpu.kubelet import (
    ClaimFailed,
    ClaimPrepared,
    ClaimRef,
    ClaimUnprepared,
    DeviceHealth,
    HealthBoard,
    KubeletPluginConfig,
    PreparedDevice,
    PrepareResult,
    RunningPlugin,
    UnprepareResult,
    serve_kubelet_plugin,
)
from tests.support.grpcio_protos import load_grpc_modules

PROTOS = Path(__file__).resolve().parents[2] / "protos"
APIS = "k8s.io/kubelet/pkg/apis"


@dataclass(frozen=True)
class GrpcioApi:
    """pb2 and pb2_grpc modules of one proto file."""

    pb2: ModuleType
    grpc: ModuleType


def _api(proto: str) -> GrpcioApi:
    pb2, pb2_grpc = load_grpc_modules(PROTOS, f"{APIS}/{proto}")
    return GrpcioApi(pb2, pb2_grpc)


@pytest.fixture(scope="session")
def dra_v1() -> GrpcioApi:
    return _api("dra/v1/api.proto")


@pytest.fixture(scope="session")
def dra_v1beta1() -> GrpcioApi:
    return _api("dra/v1beta1/api.proto")


@pytest.fixture(scope="session")
def health_api() -> GrpcioApi:
    return _api("dra-health/v1alpha1/api.proto")


@pytest.fixture(scope="session")
def health_v1_api() -> GrpcioApi:
    return _api("dra-health/v1/api.proto")


@pytest.fixture(scope="session", params=["v1", "v1alpha1"])
def health_apis(request: pytest.FixtureRequest) -> GrpcioApi:
    """Each DRAResourceHealth version dracpu serves (the kubelet picks one; v1 from 1.37)."""
    return _api(f"dra-health/{request.param}/api.proto")


@pytest.fixture(scope="session")
def registration_api() -> GrpcioApi:
    return _api("pluginregistration/v1/api.proto")


@pytest.fixture
def kubelet_root() -> Iterator[Path]:
    """A short temporary kubelet root (unix socket paths are limited to 107 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="kl-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


PrepareFn = Callable[[Sequence[ClaimRef]], Awaitable[Mapping[str, PrepareResult]]]


@dataclass
class RecordingHandler:
    """A ClaimHandler that records calls and answers from tables the test fills in.

    ``prepare_override``, when set, computes prepare's answer instead of the table.

    Claims without an entry in ``prepare_results`` / ``unprepare_results`` are prepared with one
    device ``cpu-<uid>`` / unprepared. ``raise_error`` makes every call raise it. ``block`` makes
    calls wait forever (for cancellation tests); ``entered`` is set when a call starts.
    """

    prepare_results: dict[str, PrepareResult] = field(default_factory=dict)
    unprepare_results: dict[str, UnprepareResult] = field(default_factory=dict)
    raise_error: Exception | None = None
    block: bool = False
    calls: list[tuple[str, tuple[ClaimRef, ...]]] = field(default_factory=list)
    entered: trio.Event = field(default_factory=trio.Event)
    prepare_override: (
        Callable[[Sequence[ClaimRef]], Awaitable[Mapping[str, PrepareResult]]] | None
    ) = None

    async def _enter(self, op: str, claims: Sequence[ClaimRef]) -> None:
        self.calls.append((op, tuple(claims)))
        self.entered.set()
        if self.block:
            await trio.sleep_forever()
        if self.raise_error is not None:
            raise self.raise_error

    async def prepare(self, claims: Sequence[ClaimRef]) -> Mapping[str, PrepareResult]:
        await self._enter("prepare", claims)
        if self.prepare_override is not None:
            return await self.prepare_override(claims)
        return {
            c.uid: self.prepare_results.get(
                c.uid, ClaimPrepared((PreparedDevice("pool", f"cpu-{c.uid}"),))
            )
            for c in claims
        }

    async def unprepare(self, claims: Sequence[ClaimRef]) -> Mapping[str, UnprepareResult]:
        await self._enter("unprepare", claims)
        return {c.uid: self.unprepare_results.get(c.uid, ClaimUnprepared()) for c in claims}


@dataclass
class PluginUnderTest:
    running: RunningPlugin
    handler: RecordingHandler
    health: HealthBoard
    cancel_scope: trio.CancelScope
    stopped: trio.Event

    def channel(self, which: str = "dra") -> grpc.Channel:
        path = (
            self.running.paths.dra_socket
            if which == "dra"
            else self.running.paths.registration_socket
        )
        return grpc.insecure_channel(f"unix://{path}")


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def health_board() -> HealthBoard:
    return HealthBoard([DeviceHealth("pool", "cpu-0"), DeviceHealth("pool", "cpu-1")])


@pytest.fixture
async def plugin(
    nursery: trio.Nursery,
    kubelet_root: Path,
    handler: RecordingHandler,
    health_board: HealthBoard,
) -> AsyncIterator[PluginUnderTest]:
    """The kubelet plugin serving under ``kubelet_root`` until the test ends (or cancels it)."""
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[RunningPlugin] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await serve_kubelet_plugin(
                    KubeletPluginConfig(kubelet_root=kubelet_root, health_period=0.5),
                    handler,
                    health_board,
                    task_status=task_status,
                )
        finally:
            stopped.set()

    running: RunningPlugin = await nursery.start(run)
    yield PluginUnderTest(running, handler, health_board, scope, stopped)
    scope.cancel()


__all__ = ["ClaimFailed", "GrpcioApi", "PluginUnderTest", "RecordingHandler"]
