"""DRAResourceHealth NodeWatchResources (v1 and v1alpha1): grpcio streams the full device list."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import trio

from dracpu.kubelet import DeviceHealth, Health
from tests.kubelet.conftest import GrpcioApi, PluginUnderTest

DeviceRow = tuple[str, str, int, str, int, int]


class _Watcher:
    """Reads a NodeWatchResources stream in a thread into a queue of (time, device tuples)."""

    def __init__(self, plugin: PluginUnderTest, api: GrpcioApi) -> None:
        self.items: queue.Queue[tuple[float, list[DeviceRow]] | Exception] = queue.Queue()
        self._channel = plugin.channel()
        stub = api.grpc.DRAResourceHealthStub(self._channel)
        self.call = stub.NodeWatchResources(api.pb2.NodeWatchResourcesRequest(), timeout=30)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for response in self.call:
                self.items.put(
                    (
                        time.monotonic(),
                        [
                            (
                                d.device.pool_name,
                                d.device.device_name,
                                d.health,
                                d.message,
                                d.health_check_timeout_seconds,
                                d.last_updated_time,
                            )
                            for d in response.devices
                        ],
                    )
                )
        except grpc.RpcError as exc:
            self.items.put(exc)

    async def next(self) -> tuple[float, list[DeviceRow]]:
        item = await trio.to_thread.run_sync(self.items.get, True, 10.0)
        assert not isinstance(item, Exception), item
        return item

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(10)
        self._channel.close()


async def test_stream_sends_full_list_now_on_change_and_periodically(
    plugin: PluginUnderTest, health_apis: GrpcioApi
) -> None:
    health_api = health_apis
    watcher = _Watcher(plugin, health_api)
    try:
        _, first = await watcher.next()
        assert [(p, d, h) for p, d, h, *_ in first] == [
            ("pool", "cpu-0", health_api.pb2.HEALTHY),
            ("pool", "cpu-1", health_api.pb2.HEALTHY),
        ]
        assert all(abs(ts - time.time()) < 5 for *_, ts in first)

        plugin.health.publish(
            [
                DeviceHealth("pool", "cpu-0"),
                DeviceHealth(
                    "pool", "cpu-1", Health.UNHEALTHY, message="offline", timeout_seconds=60
                ),
            ]
        )
        _, changed = await watcher.next()
        assert changed[1][:5] == ("pool", "cpu-1", health_api.pb2.UNHEALTHY, "offline", 60)
        assert len(changed) == 2

        # Nothing changes: the full list is re-sent after the period (0.5 s in the fixture).
        t0, again = await watcher.next()
        t1, again2 = await watcher.next()
        assert [d[:5] for d in again] == [d[:5] for d in changed]
        assert [d[:5] for d in again2] == [d[:5] for d in changed]
        assert 0.3 < t1 - t0 < 3.0
    finally:
        await trio.to_thread.run_sync(watcher.close)


async def test_publishing_the_same_list_wakes_nobody(plugin: PluginUnderTest) -> None:
    assert not plugin.health.publish(list(plugin.health.devices))
    assert plugin.health.publish([DeviceHealth("pool", "cpu-0")])


async def test_both_versions_stream_the_same_board_at_once(
    plugin: PluginUnderTest, health_api: GrpcioApi, health_v1_api: GrpcioApi
) -> None:
    """A kubelet upgraded to 1.37 moves from v1alpha1 to v1; both streams see every change."""
    v1_api = health_v1_api
    old, new = _Watcher(plugin, health_api), _Watcher(plugin, v1_api)
    try:
        await old.next()
        await new.next()
        plugin.health.publish([DeviceHealth("pool", "cpu-0", Health.UNHEALTHY, message="gone")])
        for watcher, api in ((old, health_api), (new, v1_api)):
            _, devices = await watcher.next()
            assert [d[:4] for d in devices] == [("pool", "cpu-0", api.pb2.UNHEALTHY, "gone")]
    finally:
        await trio.to_thread.run_sync(old.close)
        await trio.to_thread.run_sync(new.close)
