"""Socket lifecycle: stale files, start order, rolling-update names, removal at stop."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import grpc
import pytest
import trio

from dracpu.errors import InvalidValueError
from dracpu.kubelet import (
    HealthBoard,
    KubeletPluginConfig,
    KubeletSocketError,
    PluginPaths,
    RunningPlugin,
    serve_kubelet_plugin,
)
from tests.kubelet.conftest import GrpcioApi, RecordingHandler


def _stale_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # leaves the file behind, like a crashed process


async def _serve(
    nursery: trio.Nursery, config: KubeletPluginConfig
) -> tuple[RunningPlugin, trio.CancelScope]:
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[RunningPlugin] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await serve_kubelet_plugin(
                config, RecordingHandler(), HealthBoard(), task_status=task_status
            )

    running: RunningPlugin = await nursery.start(run)
    return running, scope


async def test_stale_sockets_are_replaced_and_removed_at_stop(
    kubelet_root: Path, registration_api: GrpcioApi
) -> None:
    paths = PluginPaths.for_driver("dra.cpu", kubelet_root)
    _stale_socket(paths.dra_socket)
    _stale_socket(paths.registration_socket)

    async with trio.open_nursery() as nursery:
        running, scope = await _serve(nursery, KubeletPluginConfig(kubelet_root=kubelet_root))

        def call() -> str:
            target = f"unix://{running.paths.registration_socket}"
            with grpc.insecure_channel(target) as channel:
                stub = registration_api.grpc.RegistrationStub(channel)
                return str(stub.GetInfo(registration_api.pb2.InfoRequest(), timeout=5).name)

        assert await trio.to_thread.run_sync(call) == "dra.cpu"
        scope.cancel()

    assert not paths.dra_socket.exists()
    assert not paths.registration_socket.exists()


async def test_non_socket_file_is_not_deleted(kubelet_root: Path) -> None:
    paths = PluginPaths.for_driver("dra.cpu", kubelet_root)
    paths.dra_socket.parent.mkdir(parents=True)
    paths.dra_socket.write_text("not a socket")

    with pytest.raises(KubeletSocketError, match="non-socket") as info:
        await serve_kubelet_plugin(
            KubeletPluginConfig(kubelet_root=kubelet_root), RecordingHandler(), HealthBoard()
        )
    assert info.value.path == str(paths.dra_socket)
    assert paths.dra_socket.read_text() == "not a socket"
    assert not paths.registration_socket.exists()


async def test_too_long_socket_path_is_rejected_naming_it(kubelet_root: Path) -> None:
    deep = kubelet_root / ("x" * 120)
    with pytest.raises(KubeletSocketError, match="longer than 107 bytes"):
        await serve_kubelet_plugin(
            KubeletPluginConfig(kubelet_root=deep), RecordingHandler(), HealthBoard()
        )


async def test_dra_socket_serves_before_registration_socket_appears(
    kubelet_root: Path, dra_v1: GrpcioApi
) -> None:
    """A kubelet-like watcher calls the DRA socket the instant the registration socket exists."""
    paths = PluginPaths.for_driver("dra.cpu", kubelet_root)
    outcome: list[object] = []
    stop = threading.Event()

    def kubelet() -> None:
        while not paths.registration_socket.exists():
            if stop.wait(0.0005):
                return
        with grpc.insecure_channel(f"unix://{paths.dra_socket}") as channel:
            stub = dra_v1.grpc.DRAPluginStub(channel)
            try:
                outcome.append(
                    stub.NodeUnprepareResources(
                        dra_v1.pb2.NodeUnprepareResourcesRequest(), timeout=5
                    )
                )
            except grpc.RpcError as exc:
                outcome.append(exc.code())

    thread = threading.Thread(target=kubelet, daemon=True)
    thread.start()
    try:
        async with trio.open_nursery() as nursery:
            _, scope = await _serve(nursery, KubeletPluginConfig(kubelet_root=kubelet_root))
            await trio.to_thread.run_sync(thread.join, 10)
            scope.cancel()
    finally:
        stop.set()
    assert len(outcome) == 1
    assert isinstance(outcome[0], dra_v1.pb2.NodeUnprepareResourcesResponse), outcome


async def test_rolling_update_names_carry_the_pod_uid(
    kubelet_root: Path, registration_api: GrpcioApi
) -> None:
    uid = "0b8f6d8e-5c1a-4f1e-9d0a-3f2b7c6e9a11"
    async with trio.open_nursery() as nursery:
        running, scope = await _serve(
            nursery, KubeletPluginConfig(kubelet_root=kubelet_root, pod_uid=uid)
        )
        assert running.paths.registration_socket == (
            kubelet_root / "plugins_registry" / f"dra.cpu-{uid}-reg.sock"
        )
        assert running.paths.dra_socket == kubelet_root / "plugins" / "dra.cpu" / f"dra-{uid}.sock"
        assert running.paths.dra_socket.exists()

        def endpoint() -> str:
            target = f"unix://{running.paths.registration_socket}"
            with grpc.insecure_channel(target) as channel:
                stub = registration_api.grpc.RegistrationStub(channel)
                return str(stub.GetInfo(registration_api.pb2.InfoRequest(), timeout=5).endpoint)

        assert await trio.to_thread.run_sync(endpoint) == str(running.paths.dra_socket)
        scope.cancel()


async def test_replaced_socket_of_a_newer_instance_is_left_alone(kubelet_root: Path) -> None:
    async with trio.open_nursery() as nursery:
        running, scope = await _serve(nursery, KubeletPluginConfig(kubelet_root=kubelet_root))
        # A newer instance with the same names took over the registration socket.
        running.paths.registration_socket.unlink()
        _stale_socket(running.paths.registration_socket)
        scope.cancel()
    assert running.paths.registration_socket.exists()
    assert not running.paths.dra_socket.exists()


@pytest.mark.parametrize(
    ("kwargs", "origin"),
    [
        ({"driver_name": "Dra/CPU"}, "driver name"),
        ({"driver_name": "x" * 64}, "driver name"),
        ({"kubelet_root": Path("var/lib/kubelet")}, "kubelet root"),
        ({"pod_uid": "../../etc"}, "pod UID"),
        ({"plugin_dir": Path("rel")}, "plugin directory"),
    ],
)
def test_bad_configuration_names_value_and_origin(kwargs: dict[str, object], origin: str) -> None:
    config = KubeletPluginConfig(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError) as info:
        config.paths()
    assert origin in info.value.origin
    assert repr(str(next(iter(kwargs.values())))) in str(info.value) or "x" * 64 in str(info.value)


def test_directories_can_be_placed_elsewhere() -> None:
    paths = PluginPaths.for_driver(
        "dra.cpu",
        Path("/var/lib/kubelet"),
        plugin_dir=Path("/run/dracpu"),
        registry_dir=Path("/var/lib/kubelet/plugins_registry"),
    )
    assert paths.dra_socket == Path("/run/dracpu/dra.sock")
    assert paths.registration_socket == Path("/var/lib/kubelet/plugins_registry/dra.cpu-reg.sock")
    default = PluginPaths.for_driver("dra.cpu")
    assert default.dra_socket == Path("/var/lib/kubelet/plugins/dra.cpu/dra.sock")
