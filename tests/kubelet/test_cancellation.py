"""Stopping the plugin: kubelet clients see UNAVAILABLE promptly, never a hang."""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc
import trio

from dracpu.kubelet import ClaimPrepared, ClaimRef, PrepareResult
from tests.kubelet.conftest import GrpcioApi, PluginUnderTest

# Generous client deadline: a hang would surface as DEADLINE_EXCEEDED after this long.
CLIENT_DEADLINE = 20.0


async def test_in_flight_prepare_sees_unavailable_on_cancel(
    plugin: PluginUnderTest, dra_v1: GrpcioApi
) -> None:
    plugin.handler.block = True
    outcome: dict[str, object] = {}

    def call() -> None:
        with plugin.channel() as channel:
            stub = dra_v1.grpc.DRAPluginStub(channel)
            request = dra_v1.pb2.NodePrepareResourcesRequest(
                claims=[dra_v1.pb2.Claim(namespace="ns", name="c", uid="u")]
            )
            start = time.monotonic()
            try:
                stub.NodePrepareResources(request, timeout=CLIENT_DEADLINE)
                outcome["code"] = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                outcome["code"] = exc.code()
            outcome["seconds"] = time.monotonic() - start

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, call)
        with trio.fail_after(10):
            await plugin.handler.entered.wait()
        plugin.cancel_scope.cancel()

    assert outcome["code"] == grpc.StatusCode.UNAVAILABLE
    assert outcome["seconds"] < 10  # type: ignore[operator]
    with trio.fail_after(10):
        await plugin.stopped.wait()
    assert not plugin.running.paths.dra_socket.exists()
    assert not plugin.running.paths.registration_socket.exists()


async def test_health_stream_and_idle_connection_see_unavailable_on_cancel(
    plugin: PluginUnderTest, health_api: GrpcioApi, registration_api: GrpcioApi
) -> None:
    outcome: dict[str, object] = {}
    first = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def watch() -> None:
        with plugin.channel() as channel:
            stub = health_api.grpc.DRAResourceHealthStub(channel)
            stream = stub.NodeWatchResources(
                health_api.pb2.NodeWatchResourcesRequest(), timeout=CLIENT_DEADLINE
            )
            try:
                for _ in stream:
                    trio.from_thread.run_sync(first.set, trio_token=token)
                outcome["watch"] = "ended"
            except grpc.RpcError as exc:
                outcome["watch"] = exc.code()

    idle = plugin.channel("registration")
    try:
        stub = registration_api.grpc.RegistrationStub(idle)
        await trio.to_thread.run_sync(
            lambda: stub.GetInfo(registration_api.pb2.InfoRequest(), timeout=5)
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, watch)
            with trio.fail_after(10):
                await first.wait()
            plugin.cancel_scope.cancel()

        def after_stop() -> object:
            try:
                return stub.GetInfo(registration_api.pb2.InfoRequest(), timeout=5)
            except grpc.RpcError as exc:
                return exc.code()

        assert await trio.to_thread.run_sync(after_stop) == grpc.StatusCode.UNAVAILABLE
    finally:
        idle.close()
    assert outcome["watch"] == grpc.StatusCode.UNAVAILABLE


async def test_cancelling_the_whole_tree_including_the_loop_does_not_hang(
    kubelet_root: object, dra_v1: GrpcioApi
) -> None:
    """The trio-asyncio loop is opened by serve_kubelet_plugin itself and cancelled with it."""
    from dracpu.kubelet import HealthBoard, KubeletPluginConfig, serve_kubelet_plugin
    from tests.kubelet.conftest import RecordingHandler

    handler = RecordingHandler(block=True)
    outcome: list[object] = []
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            running = await nursery.start(
                serve_kubelet_plugin,
                KubeletPluginConfig(kubelet_root=kubelet_root),  # type: ignore[arg-type]
                handler,
                HealthBoard(),
            )

            def call() -> None:
                with grpc.insecure_channel(f"unix://{running.paths.dra_socket}") as channel:
                    stub = dra_v1.grpc.DRAPluginStub(channel)
                    try:
                        stub.NodeUnprepareResources(
                            dra_v1.pb2.NodeUnprepareResourcesRequest(
                                claims=[dra_v1.pb2.Claim(uid="u")]
                            ),
                            timeout=CLIENT_DEADLINE,
                        )
                    except grpc.RpcError as exc:
                        outcome.append(exc.code())

            nursery.start_soon(trio.to_thread.run_sync, call)
            await handler.entered.wait()
            nursery.cancel_scope.cancel()
    assert outcome == [grpc.StatusCode.UNAVAILABLE]


async def test_idle_accepted_connection_is_closed_by_the_server(plugin: PluginUnderTest) -> None:
    """grpclib's Server.close() leaves idle connections open; ours must close them."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    empty_settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    raw = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    with raw:
        await raw.connect(str(plugin.running.paths.dra_socket))
        await raw.send(preface + empty_settings)
        with trio.fail_after(5):
            assert await raw.recv(65536)  # the server's SETTINGS: the connection is accepted
        plugin.cancel_scope.cancel()
        with trio.fail_after(5):
            while await raw.recv(65536):  # a GOAWAY or nothing, then end of stream
                pass


async def test_kubelet_deadline_cancels_the_handler_and_frees_the_queue(
    plugin: PluginUnderTest, dra_v1: GrpcioApi
) -> None:
    """A call the kubelet gave up on must not block later calls (calls are serialized)."""
    cancelled = trio.Event()
    release_block = [True]

    async def prepare(claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        if release_block[0]:
            release_block[0] = False
            try:
                await trio.sleep_forever()
            finally:
                cancelled.set()
        return {c.uid: ClaimPrepared() for c in claims}

    plugin.handler.prepare_override = prepare

    def call(timeout: float) -> grpc.StatusCode:
        with plugin.channel() as channel:
            stub = dra_v1.grpc.DRAPluginStub(channel)
            request = dra_v1.pb2.NodePrepareResourcesRequest(
                claims=[dra_v1.pb2.Claim(namespace="ns", name="c", uid="u")]
            )
            try:
                stub.NodePrepareResources(request, timeout=timeout)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

    assert await trio.to_thread.run_sync(call, 0.5) == grpc.StatusCode.DEADLINE_EXCEEDED
    with trio.fail_after(10):
        await cancelled.wait()
    assert await trio.to_thread.run_sync(call, 10.0) == grpc.StatusCode.OK
