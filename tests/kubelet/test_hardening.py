"""Hostile or broken peers on the kubelet sockets: the server keeps serving, frees what they
leave behind, and bounds what they can make it hold (issue 8, items 1, 2 and 5).

Peers are real clients on the real unix sockets: raw HTTP/2 from h2 (tests/support/h2raw.py)
for what no gRPC library would send, grpcio for what the kubelet would.
"""

from __future__ import annotations

import errno
import gc
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpclib.protocol
import h2.connection
import h2.settings
import pytest
import trio

from dracpu.kubelet import (
    GrpcLimits,
    HealthBoard,
    KubeletPluginConfig,
    RunningPlugin,
    serve_kubelet_plugin,
)
from dracpu.kubelet.aio_bridge import current_loop, open_loop
from dracpu.kubelet.ratelog import RateLimitedLog
from dracpu.kubelet.registration import RegistrationService, RegistrationStatusBoard
from dracpu.kubelet.unix_grpc import CLOSED_STREAMS_KEPT, serve_unix_grpc
from tests.kubelet.conftest import GrpcioApi, RecordingHandler
from tests.support.h2raw import (
    GET_INFO,
    PREFACE,
    PREPARE_V1,
    RawH2,
    frame,
    grpc_message,
    remote_setting,
)

TIMEOUT = 10.0


@dataclass
class Served:
    running: RunningPlugin
    handler: RecordingHandler
    stopped: trio.Event

    @property
    def dra(self) -> Path:
        return self.running.paths.dra_socket

    @property
    def registration(self) -> Path:
        return self.running.paths.registration_socket


@pytest.fixture
def limits() -> GrpcLimits:
    return GrpcLimits()


@pytest.fixture
async def served(
    nursery: trio.Nursery, kubelet_root: Path, handler: RecordingHandler, limits: GrpcLimits
) -> AsyncIterator[Served]:
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[RunningPlugin] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_kubelet_plugin(
                KubeletPluginConfig(kubelet_root=kubelet_root, grpc_limits=limits),
                handler,
                HealthBoard(),
                task_status=task_status,
            )
        finally:
            stopped.set()

    running: RunningPlugin = await nursery.start(run)
    yield Served(running, handler, stopped)
    nursery.cancel_scope.cancel()


async def _prepare(path: Path, api: GrpcioApi, uid: str = "u1") -> object:
    def call() -> object:
        with grpc.insecure_channel(f"unix://{path}") as channel:
            stub = api.grpc.DRAPluginStub(channel)
            request = api.pb2.NodePrepareResourcesRequest(
                claims=[api.pb2.Claim(namespace="ns", name="c", uid=uid)]
            )
            return stub.NodePrepareResources(request, timeout=TIMEOUT)

    return await trio.to_thread.run_sync(call)


async def _get_info(path: Path, api: GrpcioApi) -> object:
    def call() -> object:
        with grpc.insecure_channel(f"unix://{path}") as channel:
            return api.grpc.RegistrationStub(channel).GetInfo(
                api.pb2.InfoRequest(), timeout=TIMEOUT
            )

    return await trio.to_thread.run_sync(call)


async def _raw_call(path: Path, method: str, payload: bytes) -> tuple[int | None, str]:
    def call() -> tuple[int | None, str]:
        with RawH2(path) as client:
            response = client.call(method, payload)
            return response.grpc_status, response.headers.get("grpc-message", "")

    return await trio.to_thread.run_sync(call)


# --- item 1: no error on one connection ends the server -----------------------------------


@pytest.mark.parametrize("frame_type", [0x0B, 0x10, 0xEE], ids=["0x0b", "0x10", "0xee"])
@pytest.mark.parametrize("socket_name", ["dra", "registration"])
async def test_unknown_frame_types_are_ignored(
    served: Served,
    dra_v1: GrpcioApi,
    registration_api: GrpcioApi,
    frame_type: int,
    socket_name: str,
) -> None:
    path = served.dra if socket_name == "dra" else served.registration

    def attack() -> bool:
        with RawH2(path) as client:  # preface and SETTINGS, from h2
            client.send_raw(frame(frame_type, b"\x01\x02\x03"))
            # The connection itself stays usable: RFC 9113 says ignore the frame.
            sid = client.start_request(GET_INFO if socket_name == "registration" else PREPARE_V1)
            client.send_data(sid, grpc_message(b""), end_stream=True)
            return client.wait_response(sid).grpc_status == 0

    assert await trio.to_thread.run_sync(attack)
    await trio.sleep(0.2)
    assert not served.stopped.is_set()
    assert (await _prepare(served.dra, dra_v1)).claims["u1"].devices  # type: ignore[attr-defined]
    assert (await _get_info(served.registration, registration_api)).name == "dra.cpu"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00" * 64,
        PREFACE + b"\xff" * 40,
        PREFACE + frame(0x4) + frame(0x1, b"\xff" * 20, flags=0x4, stream_id=1),
    ],
    ids=["http1", "zeros", "bad-frame-header", "bad-hpack"],
)
async def test_garbage_closes_only_that_connection(
    served: Served, dra_v1: GrpcioApi, garbage: bytes
) -> None:
    def attack() -> bool:
        with RawH2(served.dra, handshake=False) as client:
            client.send_raw(garbage)
            return client.wait_closed(5.0)

    assert await trio.to_thread.run_sync(attack)
    assert not served.stopped.is_set()
    assert (await _prepare(served.dra, dra_v1)).claims["u1"].devices  # type: ignore[attr-defined]


async def test_loop_errors_are_logged_not_raised(
    kubelet_root: Path, registration_api: GrpcioApi, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncio reports e.g. EMFILE in accept through the loop's exception handler; trio-asyncio's
    default re-raises that into the loop's nursery, which would end every server."""
    path = kubelet_root / "reg.sock"
    service = RegistrationService(
        driver_name="dra.cpu",
        endpoint="/x/dra.sock",
        supported_services=("v1.DRAPlugin",),
        board=RegistrationStatusBoard(),
    )
    async with open_loop(), serve_unix_grpc(path, [service]):
        current_loop().call_exception_handler(
            {
                "message": "socket.accept() out of system resource",
                "exception": OSError(errno.EMFILE, "Too many open files"),
            }
        )
        await trio.sleep(0.1)
        assert (await _get_info(path, registration_api)).name == "dra.cpu"  # type: ignore[attr-defined]
    assert "socket.accept() out of system resource" in caplog.text


# --- item 2: abandoned streams are freed; size, streams, connections, idle time bounded ----


def _live_streams() -> int:
    gc.collect()
    return sum(isinstance(o, grpclib.protocol.Stream) for o in gc.get_objects())


def _abandon(path: Path, size: int, how: str) -> int:
    """Open a request, send ``size`` bytes of a ``size``-byte message minus one, give up."""
    with RawH2(path) as client:
        sid = client.start_request(PREPARE_V1)
        sent = client.send_data(sid, grpc_message(b"\x00" * (size - 1), declared=size), wait=2.0)
        if how == "rst":
            client.conn.reset_stream(sid)
            client.flush()
            client.pump(0.1)
        return sent


@pytest.mark.parametrize("how", ["disconnect", "rst"])
async def test_abandoned_streams_and_buffers_are_freed(
    served: Served, dra_v1: GrpcioApi, how: str
) -> None:
    await _prepare(served.dra, dra_v1)
    baseline = _live_streams()
    for _ in range(6):
        sent = await trio.to_thread.run_sync(_abandon, served.dra, 4 << 20, how)
        assert sent > 1 << 20  # the server really buffered a large part of it
    for _ in range(100):  # handler tasks finish on the next loop turns
        if _live_streams() <= baseline:
            break
        await trio.sleep(0.05)
    assert _live_streams() <= baseline
    assert (await _prepare(served.dra, dra_v1)).claims["u1"].devices  # type: ignore[attr-defined]


@pytest.mark.parametrize("limits", [GrpcLimits(max_receive_message_bytes=64 << 10)])
async def test_oversized_message_is_refused_before_its_body(
    served: Served, dra_v1: GrpcioApi, limits: GrpcLimits
) -> None:
    def attack() -> tuple[int | None, int]:
        with RawH2(served.dra) as client:
            sid = client.start_request(PREPARE_V1)
            # Only the length prefix and a few bytes: the answer must not wait for the body.
            client.send_data(sid, grpc_message(b"\x0a" * 16, declared=(64 << 10) + 1))
            return client.wait_response(sid).grpc_status, len(served.handler.calls)

    status, calls = await trio.to_thread.run_sync(attack)
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert calls == 0

    def grpcio_call() -> grpc.StatusCode:
        with grpc.insecure_channel(f"unix://{served.dra}") as channel:
            stub = dra_v1.grpc.DRAPluginStub(channel)
            claims = [
                dra_v1.pb2.Claim(namespace="ns", name="c" * 1000, uid=str(i)) for i in range(80)
            ]
            with pytest.raises(grpc.RpcError) as err:
                stub.NodePrepareResources(
                    dra_v1.pb2.NodePrepareResourcesRequest(claims=claims), timeout=TIMEOUT
                )
            return err.value.code()  # type: ignore[no-any-return, attr-defined]

    assert await trio.to_thread.run_sync(grpcio_call) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await _prepare(served.dra, dra_v1)).claims["u1"].devices  # type: ignore[attr-defined]


async def test_default_message_limit_is_4_mib(served: Served) -> None:
    def attack() -> int | None:
        with RawH2(served.dra) as client:
            sid = client.start_request(PREPARE_V1)
            client.send_data(sid, grpc_message(b"", declared=(4 << 20) + 1))
            return client.wait_response(sid).grpc_status

    assert await trio.to_thread.run_sync(attack) == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


@pytest.mark.parametrize("limits", [GrpcLimits(max_concurrent_streams=4)])
async def test_concurrent_streams_are_advertised_and_enforced(
    served: Served, dra_v1: GrpcioApi, limits: GrpcLimits
) -> None:
    code = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS

    def attack() -> tuple[int | None, bool]:
        with RawH2(served.dra) as client:
            advertised = remote_setting(client, code)
            # Pretend we did not see the limit and open one stream more than allowed.
            client.conn.remote_settings[code] = 1000
            client.conn.remote_settings.acknowledge()
            for _ in range(5):
                client.start_request(PREPARE_V1)
            return advertised, client.wait_closed(5.0)

    advertised, closed = await trio.to_thread.run_sync(attack)
    assert advertised == 4
    assert closed
    assert (await _prepare(served.dra, dra_v1)).claims["u1"].devices  # type: ignore[attr-defined]


@pytest.mark.parametrize("limits", [GrpcLimits(idle_timeout=0.3)])
async def test_idle_connections_are_closed(served: Served, limits: GrpcLimits) -> None:
    def idle() -> tuple[bool, bool]:
        with RawH2(served.dra) as client:
            closed = client.wait_closed(3.0)
            return closed, client.goaway

    closed, goaway = await trio.to_thread.run_sync(idle)
    assert closed
    assert goaway


@pytest.mark.parametrize("limits", [GrpcLimits(idle_timeout=0.3)])
async def test_slowloris_headers_are_cut_off(served: Served, limits: GrpcLimits) -> None:
    """A peer trickling its preface and headers a byte at a time never opens a stream, so it
    counts as idle and is closed."""

    def trickle() -> bool:
        """Whether the server hangs up (EOF) while we are still trickling."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(served.dra))
            s.settimeout(0.02)
            deadline = time.monotonic() + 3.0
            for byte in itertools.cycle(PREFACE + frame(0x4)):
                if time.monotonic() > deadline:
                    return False
                try:
                    s.sendall(bytes([byte]))
                    while True:  # drain what the server sent; b"" is its hang-up
                        if not s.recv(65536):
                            return True
                except TimeoutError:
                    continue
                except OSError:
                    return True
            return False

    assert await trio.to_thread.run_sync(trickle)


@pytest.mark.parametrize("limits", [GrpcLimits(max_connections=4)])
async def test_connection_cap_evicts_idle_connections(
    served: Served, dra_v1: GrpcioApi, limits: GrpcLimits
) -> None:
    socks = []
    try:
        for _ in range(12):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(served.dra))
            s.sendall(PREFACE + frame(0x4))
            socks.append(s)
        await trio.sleep(0.3)
        assert (await _prepare(served.dra, dra_v1)).claims["u1"].devices  # type: ignore[attr-defined]
        s.setblocking(False)
        closed = 0
        for s in socks:
            s.settimeout(0.5)
            try:
                while s.recv(65536):
                    pass
                closed += 1
            except (TimeoutError, ConnectionResetError):
                pass
        assert closed >= 12 - 4
    finally:
        for s in socks:
            s.close()


# --- item 5: malformed, wrong-typed and truncated protobuf ---------------------------------


def _claim_bytes(api: GrpcioApi) -> bytes:
    request = api.pb2.NodePrepareResourcesRequest(
        claims=[api.pb2.Claim(namespace="ns", name="claim", uid="uid-1")]
    )
    return request.SerializeToString()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (lambda b: b[:-3], "truncated inside a string"),
        (lambda b: b[:1], "truncated after a tag"),
        (lambda b: b"\x08\x01", "varint where claims (a message) belong"),
        (lambda b: b"\x0a\x02\x08\x07", "varint where Claim.namespace (a string) belongs"),
        (lambda b: b"\x0a\x03\x0a\x01\xff", "string not UTF-8"),
        (lambda b: b"\x0b\x0c", "group wire type"),
        (lambda b: b"\xff" * 12, "overlong varint"),
        (lambda b: b"\x0a" * 200 + b"\x00", "deeply truncated nesting"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_malformed_protobuf_is_invalid_argument(
    served: Served,
    dra_v1: GrpcioApi,
    caplog: pytest.LogCaptureFixture,
    payload: object,
    why: str,
) -> None:
    data = payload(_claim_bytes(dra_v1))  # type: ignore[operator]
    status, message = await _raw_call(served.dra, PREPARE_V1, data)
    assert status == grpc.StatusCode.INVALID_ARGUMENT.value[0], (why, message)
    assert "malformed NodePrepareResourcesRequest" in message or "malformed Claim" in message
    assert served.handler.calls == []
    # At most one line (repeats within 10 s are counted, not logged), never a traceback.
    records = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert len(records) <= 1, [r.getMessage() for r in records]
    assert all(r.exc_info is None for r in records)
    assert (await _prepare(served.dra, dra_v1)).claims["u1"].devices  # type: ignore[attr-defined]


async def test_well_formed_request_with_unknown_fields_still_works(
    served: Served, dra_v1: GrpcioApi
) -> None:
    data = _claim_bytes(dra_v1) + b"\xa0\x06\x01" + b"\xaa\x06\x02hi"  # fields 100 and 101
    status, _ = await _raw_call(served.dra, PREPARE_V1, data)
    assert status == 0
    assert served.handler.calls[0][1][0].uid == "uid-1"


def test_rate_limited_log_drops_repeats_and_counts_them(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog(logging.getLogger("test.ratelog"), period=0.2)
    for i in range(5):
        log.warning("k", "bad request %d", i)
    log.warning("other", "another fault")
    time.sleep(0.25)
    log.warning("k", "bad request %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "bad request 0",
        "another fault",
        "bad request 5 (4 more like it not logged)",
    ]


def _server_h2_tables() -> list[int]:
    """How many closed streams each server-side h2 connection of this process remembers."""
    gc.collect()
    return [
        len(o._closed_streams)
        for o in gc.get_objects()
        if isinstance(o, h2.connection.H2Connection) and not o.config.client_side
    ]


async def test_a_long_lived_connection_forgets_old_closed_streams(
    served: Served, dra_v1: GrpcioApi
) -> None:
    """The kubelet's one connection, one stream per call: h2's record of closed streams stays
    bounded (its default, 65,536, grew the daemon by about 165 bytes a call)."""
    calls = CLOSED_STREAMS_KEPT + 300

    def run() -> list[int]:
        with grpc.insecure_channel(f"unix://{served.dra}") as channel:
            stub = dra_v1.grpc.DRAPluginStub(channel)
            request = dra_v1.pb2.NodePrepareResourcesRequest(
                claims=[dra_v1.pb2.Claim(namespace="ns", name="c", uid="u1")]
            )
            for _ in range(calls):
                stub.NodePrepareResources(request, timeout=TIMEOUT)
            return _server_h2_tables()

    tables = await trio.to_thread.run_sync(run)
    assert tables, "no server-side h2 connection found"
    assert max(tables) == CLOSED_STREAMS_KEPT, tables
