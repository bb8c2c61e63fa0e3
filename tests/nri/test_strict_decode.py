"""NRI requests are decoded strictly: truncated or wrong-typed payloads are refused with
INVALID_ARGUMENT and never reach the handler as shortened strings or wrong Python types."""

from __future__ import annotations

import pytest
import trio

from dracpu.nri import RpcStatusError
from dracpu.nri.lazy import CreateRequestView
from dracpu.nri.ttrpc import Code
from generated.nri.pkg.api import v1alpha1 as api
from tests.nri.inmemory import PLUGIN
from tests.nri.recording_handler import RecordingHandler
from tests.nri.test_connection import plugin_with_fake_runtime


class LazyRecordingHandler(RecordingHandler):
    """Takes the plugin's lazy CreateContainer path (dracpu.nri.lazy)."""

    async def create_container_view(self, request: CreateRequestView) -> bytes:
        self.calls.append(("create", request.container_id))
        return b""


class SyncRecordingHandler(LazyRecordingHandler):
    """Also answers CreateContainer in the read loop, except for containers named "later"."""

    def create_container_now(self, request: CreateRequestView) -> bytes | None:
        if request.container_name == "later":
            return None
        self.calls.append(("create now", request.container_id))
        return b""


def _create_request(name: str = "ctr") -> bytes:
    request = api.CreateContainerRequest(
        pod=api.PodSandbox(id="pod-1", name="pod", namespace="ns"),
        container=api.Container(id="container-1", name=name, pod_sandbox_id="pod-1"),
    )
    return bytes(request)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (_create_request()[:-4], "truncated inside the container id"),
        (b"\x0a\x05\x0a\x03", "pod declares more bytes than sent"),
        (b"\x10\x07", "varint where the container (a message) belongs"),
        (b"\x12\x02\x08\x07", "varint where Container.id (a string) belongs"),
        (b"\x12\x03\x0a\x01\xff", "Container.id not UTF-8"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
@pytest.mark.parametrize("path", ["betterproto2", "lazy", "sync"])
async def test_malformed_create_container_is_invalid_argument(
    payload: bytes, why: str, path: str
) -> None:
    handler = {
        "betterproto2": RecordingHandler,
        "lazy": LazyRecordingHandler,
        "sync": SyncRecordingHandler,
    }[path]()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            _, runtime = await plugin_with_fake_runtime(nursery, handler)
            await runtime.configure()
            await runtime.synchronize([])
            with pytest.raises(RpcStatusError) as err:
                await runtime.conn.call(PLUGIN, "CreateContainer", payload)
            # The connection survives and a good request is served.
            await runtime.conn.call(PLUGIN, "CreateContainer", _create_request())
            nursery.cancel_scope.cancel()
    assert err.value.code == Code.INVALID_ARGUMENT, why
    assert "malformed" in err.value.status_message
    kind = "create now" if path == "sync" else "create"
    assert handler.calls == [(kind, "container-1")]


async def test_a_create_not_decided_now_goes_to_the_lazy_path() -> None:
    handler = SyncRecordingHandler()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            _, runtime = await plugin_with_fake_runtime(nursery, handler)
            await runtime.configure()
            await runtime.synchronize([])
            await runtime.conn.call(PLUGIN, "CreateContainer", _create_request("later"))
            await runtime.conn.call(PLUGIN, "CreateContainer", _create_request())
            nursery.cancel_scope.cancel()
    assert handler.calls == [("create", "container-1"), ("create now", "container-1")]
