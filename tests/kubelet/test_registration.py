"""Plugin registration service, called by grpcio over the real registration socket."""

from __future__ import annotations

import contextlib
from pathlib import Path

import grpc
import trio

from dracpu.kubelet import HealthBoard, KubeletPluginConfig, serve_kubelet_plugin
from tests.kubelet.conftest import GrpcioApi, PluginUnderTest, RecordingHandler

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
        "v1.DRAResourceHealth",
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


def _inode(path: Path) -> tuple[int, int] | None:
    """The file's identity: inode numbers alone are reused quickly on tmpfs."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_ctime_ns


async def _wait_for_new_inode(
    path: Path, old: tuple[int, int] | None, limit: float
) -> tuple[int, int]:
    with trio.fail_after(limit):
        while True:
            current = _inode(path)
            if current is not None and current != old:
                return current
            await trio.sleep(0.01)


async def test_unconfirmed_registration_socket_is_recreated_until_confirmed(
    kubelet_root: Path, registration_api: GrpcioApi
) -> None:
    config = KubeletPluginConfig(
        kubelet_root=kubelet_root, registration_retry=0.2, registration_retry_max=0.4
    )
    async with trio.open_nursery() as nursery:
        running = await nursery.start(
            serve_kubelet_plugin, config, RecordingHandler(), HealthBoard()
        )
        reg = running.paths.registration_socket
        dra_inode = _inode(running.paths.dra_socket)
        first = _inode(reg)
        # No kubelet answers: the socket is re-created (new inode), the DRA socket stays.
        second = await _wait_for_new_inode(reg, first, 5)
        assert _inode(running.paths.dra_socket) == dra_inode

        # The kubelet rejects: still re-created later.
        target = f"unix://{reg}"

        def notify(ok: bool) -> None:
            with grpc.insecure_channel(target) as channel:
                stub = registration_api.grpc.RegistrationStub(channel)
                status = registration_api.pb2.RegistrationStatus(
                    plugin_registered=ok, error="" if ok else "no handler"
                )
                with contextlib.suppress(grpc.RpcError):
                    stub.NotifyRegistrationStatus(status, timeout=5)

        third = await _wait_for_new_inode(reg, second, 5)
        await trio.to_thread.run_sync(notify, False)
        assert running.registration.state.error == "no handler"
        fourth = await _wait_for_new_inode(reg, third, 5)

        # Confirmed: the socket stays put well beyond the (capped) retry interval.
        await trio.to_thread.run_sync(notify, True)
        assert running.registration.state.registered
        await trio.sleep(1.5)
        assert _inode(reg) == fourth
        nursery.cancel_scope.cancel()
    assert not reg.exists()
