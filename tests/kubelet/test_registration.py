"""Plugin registration service, called by grpcio over the real registration socket."""

from __future__ import annotations

import grpc
import trio

from tests.kubelet.conftest import GrpcioApi, PluginUnderTest

TIMEOUT = 10.0


async def test_get_info_announces_dra_plugin(
    plugin: PluginUnderTest, registration_api: GrpcioApi, kubelet_root: object
) -> None:
    def call() -> object:
        with plugin.channel("registration") as channel:
            stub = registration_api.grpc.RegistrationStub(channel)
            # The kubelet gives GetInfo a 1 s deadline.
            return stub.GetInfo(registration_api.pb2.InfoRequest(), timeout=1.0)

    info = await trio.to_thread.run_sync(call)

    assert info.type == "DRAPlugin"
    assert info.name == "dra.cpu"
    assert info.endpoint == f"{kubelet_root}/plugins/dra.cpu/dra.sock"
    assert list(info.supported_versions) == [
        "v1.DRAPlugin",
        "v1beta1.DRAPlugin",
        "v1alpha1.DRAResourceHealth",
    ]
    assert plugin.running.paths.registration_socket == (
        kubelet_root / "plugins_registry" / "dra.cpu-reg.sock"  # type: ignore[operator]
    )


def _notify(plugin: PluginUnderTest, api: GrpcioApi, registered: bool, error: str) -> object:
    with plugin.channel("registration") as channel:
        stub = api.grpc.RegistrationStub(channel)
        status = api.pb2.RegistrationStatus(plugin_registered=registered, error=error)
        try:
            return stub.NotifyRegistrationStatus(status, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            return exc


async def test_notify_success_is_recorded(
    plugin: PluginUnderTest, registration_api: GrpcioApi
) -> None:
    board = plugin.running.registration
    assert board.state.notifications == 0
    assert not board.state.registered

    result = await trio.to_thread.run_sync(_notify, plugin, registration_api, True, "")

    assert isinstance(result, registration_api.pb2.RegistrationStatusResponse)
    assert board.state.registered
    assert board.state.error == ""
    assert board.state.notifications == 1
    assert board.state.updated_at > 0


async def test_notify_failure_is_recorded_and_answered_with_error(
    plugin: PluginUnderTest, registration_api: GrpcioApi
) -> None:
    board = plugin.running.registration
    reason = "RegisterPlugin error -- plugin validation failed with err: none supported"

    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            state = await board.wait_for_notification(0)
            assert state.error == reason

        nursery.start_soon(waiter)
        result = await trio.to_thread.run_sync(_notify, plugin, registration_api, False, reason)

    assert isinstance(result, grpc.RpcError)
    assert result.code() == grpc.StatusCode.UNKNOWN
    assert result.details() == f"failed registration process: {reason}"
    assert not board.state.registered
    assert board.state.error == reason

    await trio.to_thread.run_sync(_notify, plugin, registration_api, True, "")
    assert board.state.registered
    assert board.state.error == ""
    assert board.state.notifications == 2
