"""In-memory helpers for NRI transport tests: a choppy stream and a scripted fake runtime.

The fake runtime is our own MuxConnection in the runtime role; it checks our codecs against
themselves, so every behaviour it exercises is also covered against the real Go runtime in
test_go_peer.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import trio
import trio.testing

from dracpu.nri import MuxConnection, RpcStatusError
from dracpu.nri.ttrpc import Code
from generated.nri.pkg.api import v1alpha1 as api

PLUGIN = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME = "nri.pkg.api.v1alpha1.Runtime"


class ChoppyStream(trio.abc.Stream):
    """Wraps a stream; each receive_some returns at most the next size from ``sizes``."""

    def __init__(self, inner: trio.abc.Stream, sizes: list[int]) -> None:
        self._inner = inner
        self._sizes: Iterator[int] = iter(sizes)
        self._pending = b""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._pending:
            self._pending = bytes(await self._inner.receive_some(1 << 16))
            if not self._pending:
                return b""
        n = max(1, next(self._sizes, len(self._pending)))
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class FakeRuntime:
    """The runtime side of one connection: serves Runtime, calls Plugin."""

    stream: trio.abc.Stream
    registered: trio.Event = field(default_factory=trio.Event)
    register_requests: list[api.RegisterPluginRequest] = field(default_factory=list)
    updates: list[api.UpdateContainersRequest] = field(default_factory=list)
    fail_updates: bool = False
    conn: MuxConnection = field(init=False)

    def __post_init__(self) -> None:
        self.conn = MuxConnection(
            self.stream, self.serve, name="fake runtime", serve_conn=2, call_conn=1
        )

    async def serve(self, service: str, method: str, payload: bytes) -> bytes:
        if method == "RegisterPlugin":
            self.register_requests.append(api.RegisterPluginRequest.parse(payload))
            self.registered.set()
            return b""
        if method == "UpdateContainers":
            self.updates.append(api.UpdateContainersRequest.parse(payload))
            if self.fail_updates:
                raise RpcStatusError(Code.UNKNOWN, "NRI update of some containers failed")
            return bytes(api.UpdateContainersResponse())
        raise RpcStatusError(Code.UNIMPLEMENTED, f"method {method}")

    async def configure(self, **fields: object) -> api.ConfigureResponse:
        payload = bytes(api.ConfigureRequest(runtime_name="fake", runtime_version="1", **fields))
        return api.ConfigureResponse.parse(await self.conn.call(PLUGIN, "Configure", payload))

    async def synchronize(
        self, containers: list[api.Container], *, more: bool = False
    ) -> api.SynchronizeResponse:
        payload = bytes(api.SynchronizeRequest(containers=containers, more=more))
        return api.SynchronizeResponse.parse(await self.conn.call(PLUGIN, "Synchronize", payload))


def memory_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """Two connected in-memory byte streams."""
    a, b = trio.testing.memory_stream_pair()
    return a, b
