"""KubeClient against the in-process fake server: verbs, typed errors, retries, token rotation."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio

from dracpu.backoff import Backoff
from dracpu.kube.client import KubeClient, RetryPolicy, merge_patch
from dracpu.kube.config import KubeConfig
from dracpu.kube.errors import (
    AlreadyExistsError,
    ApiUnreachableError,
    ConflictError,
    ForbiddenError,
    GoneError,
    InvalidError,
    NotFoundError,
    ServerError,
    TooManyRequestsError,
    UnauthorizedError,
)
from dracpu.kube.resources import NODES, RESOURCE_CLAIMS, RESOURCE_SLICES
from tests.kube.fake_apiserver import FakeApiServer, Fault, make_config, status


def client_for(server: FakeApiServer, config: KubeConfig | None = None, **kw: object) -> KubeClient:
    return KubeClient(
        config or make_config(), transport=server.transport, rng=random.Random(1), **kw
    )  # type: ignore[arg-type]


async def test_crud_round_trip() -> None:
    server = FakeApiServer()
    async with client_for(server) as client:
        created = await client.create(
            RESOURCE_CLAIMS, {"metadata": {"name": "c1"}, "spec": {}}, namespace="ns"
        )
        assert created["metadata"]["namespace"] == "ns"
        got = await client.get(RESOURCE_CLAIMS, "c1", namespace="ns")
        assert got["metadata"]["uid"] == created["metadata"]["uid"]
        got["status"] = {"allocation": {"devices": {"results": []}}}
        updated = await client.update_status(RESOURCE_CLAIMS, got, namespace="ns")
        assert updated["status"]["allocation"] == {"devices": {"results": []}}
        listed = await client.list(RESOURCE_CLAIMS)
        assert [o["metadata"]["name"] for o in listed.items] == ["c1"]
        assert listed.resource_version == str(server.rv)
        assert await client.delete(RESOURCE_CLAIMS, "c1", namespace="ns") is True
        assert await client.delete(RESOURCE_CLAIMS, "c1", namespace="ns") is False
    assert ("PUT", "/apis/resource.k8s.io/v1/namespaces/ns/resourceclaims/c1/status") in (
        server.writes()
    )


async def test_patch_if_needed_writes_only_on_change() -> None:
    server = FakeApiServer()
    server.put_object("nodes", {"metadata": {"name": "n1", "labels": {"a": "1"}}})
    # The fake has no PATCH; only the decision matters here, so answer PATCH with the object.
    server.faults.append(Fault(code=200, method="PATCH", body={"metadata": {"name": "n1"}}))
    async with client_for(server) as client:
        obj, patched = await client.patch_if_needed(
            NODES, "n1", {"metadata": {"labels": {"a": "1"}}}
        )
        assert patched is False
        assert obj["metadata"]["labels"] == {"a": "1"}
        assert client.writes == 0
        _, patched = await client.patch_if_needed(NODES, "n1", {"metadata": {"labels": {"a": "2"}}})
        assert patched is True
        assert client.writes == 1
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {
        "a": {"c": 2, "d": 3}
    }


@pytest.mark.parametrize(
    ("code", "body", "cls"),
    [
        (404, status(404, "NotFound", "nope"), NotFoundError),
        (409, status(409, "AlreadyExists", "dup"), AlreadyExistsError),
        (409, status(409, "Conflict", "stale"), ConflictError),
        (403, status(403, "Forbidden", "rbac"), ForbiddenError),
        (410, status(410, "Expired", "old"), GoneError),
    ],
    ids=["404", "409-exists", "409-conflict", "403", "410"],
)
async def test_error_statuses_become_typed_errors_without_retry(
    code: int, body: dict[str, object], cls: type[Exception]
) -> None:
    server = FakeApiServer()
    server.faults.append(Fault(code=code, body=body, times=10))
    async with client_for(server) as client:
        with pytest.raises(cls) as info:
            await client.get(NODES, "n1")
    assert len(server.requests) == 1
    assert str(code) in str(info.value)
    assert "GET" in str(info.value)


async def test_invalid_carries_the_field_causes() -> None:
    server = FakeApiServer()
    causes = [
        {"reason": "FieldValueInvalid", "message": "bad name", "field": "spec.devices[0].name"}
    ]
    server.faults.append(Fault(code=422, body=status(422, "Invalid", "invalid slice", causes)))
    async with client_for(server) as client:
        with pytest.raises(InvalidError) as info:
            await client.create(RESOURCE_SLICES, {"metadata": {"name": "s"}})
    assert info.value.causes[0].field == "spec.devices[0].name"
    assert "spec.devices[0].name: bad name" in str(info.value)


async def test_429_retry_after_is_honoured(autojump_clock: trio.abc.Clock) -> None:
    server = FakeApiServer()
    server.put_object("nodes", {"metadata": {"name": "n1"}})
    server.faults.append(Fault(code=429, times=2, headers={"Retry-After": "3"}))
    start = trio.current_time()
    async with client_for(server) as client:
        node = await client.get(NODES, "n1")
    assert node["metadata"]["name"] == "n1"
    assert len(server.requests) == 3
    assert trio.current_time() - start == pytest.approx(6.0, abs=0.01)


async def test_429_retry_after_is_capped_and_gives_up(autojump_clock: trio.abc.Clock) -> None:
    server = FakeApiServer()
    server.faults.append(Fault(code=429, times=100, headers={"Retry-After": "3600"}))
    policy = RetryPolicy(attempts=3, max_retry_after=5.0)
    start = trio.current_time()
    async with client_for(server, retry=policy) as client:
        with pytest.raises(TooManyRequestsError) as info:
            await client.get(NODES, "n1")
    assert info.value.retry_after == 3600
    assert len(server.requests) == 3
    assert trio.current_time() - start == pytest.approx(10.0, abs=0.01)


async def test_5xx_burst_is_retried_with_growing_bounded_delays(
    autojump_clock: trio.abc.Clock,
) -> None:
    server = FakeApiServer()
    server.put_object("nodes", {"metadata": {"name": "n1"}})
    server.faults.append(Fault(code=503, times=4))
    policy = RetryPolicy(attempts=5, backoff=Backoff(initial=1.0, maximum=4.0, jitter=0.2))
    start = trio.current_time()
    async with client_for(server, retry=policy) as client:
        await client.get(NODES, "n1")
    elapsed = trio.current_time() - start
    # Delays ~1, 2, 4, 4 (capped) with ±20 % jitter but never above the cap.
    assert 0.8 * 11 <= elapsed <= 1.2 * 3 + 4 + 4 + 1.2
    assert len(server.requests) == 5


async def test_5xx_forever_gives_up_with_server_error(autojump_clock: trio.abc.Clock) -> None:
    server = FakeApiServer()
    server.faults.append(Fault(code=500, times=100))
    async with client_for(server, retry=RetryPolicy(attempts=4)) as client:
        with pytest.raises(ServerError):
            await client.get(NODES, "n1")
    assert len(server.requests) == 4


async def test_unreachable_server_is_retried_then_reported(autojump_clock: trio.abc.Clock) -> None:
    server = FakeApiServer()
    server.down = True
    async with client_for(server, retry=RetryPolicy(attempts=3)) as client:
        with pytest.raises(ApiUnreachableError) as info:
            await client.get(NODES, "n1")
    assert "ConnectError" in str(info.value)
    assert isinstance(info.value.__cause__, Exception)
    assert len(server.requests) == 3


async def test_rotated_token_file_is_reread_after_401(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    server = FakeApiServer()
    server.put_object("nodes", {"metadata": {"name": "n1"}})
    server.required_token = "first"
    config = KubeConfig(server="http://fake.invalid", origin="test", token_file=str(token))
    async with client_for(server, config) as client:
        await client.get(NODES, "n1")
        # Rotate, keeping the mtime so only the 401 can reveal the change.
        st = token.stat()
        token.write_text("second\n")
        os.utime(token, ns=(st.st_atime_ns, st.st_mtime_ns))
        server.required_token = "second"
        await client.get(NODES, "n1")
    auth_failures = [r for r in server.requests if r[0] == "GET"]
    assert len(auth_failures) == 3  # ok, 401 with the old token, ok after re-read


async def test_wrong_static_token_fails_once_without_retry() -> None:
    server = FakeApiServer()
    server.required_token = "right"
    async with client_for(server, make_config(token="wrong")) as client:
        with pytest.raises(UnauthorizedError):
            await client.get(NODES, "n1")
    assert len(server.requests) == 1


async def test_watch_streams_events_and_bookmarks() -> None:
    server = FakeApiServer()
    async with client_for(server) as client:
        listed = await client.list(NODES)
        async with client.watch(NODES, resource_version=listed.resource_version) as events:
            server.put_object("nodes", {"metadata": {"name": "n1"}})
            server.bookmark()
            server.remove_object("nodes", "n1")
            seen = []
            async for ev in events:
                seen.append((ev.type, ev.resource_version))
                if ev.type == "DELETED":
                    break
    assert [t for t, _ in seen] == ["ADDED", "BOOKMARK", "DELETED"]
    assert seen[1][1] == seen[0][1]


async def test_watch_error_410_event_and_http_410_raise_gone() -> None:
    server = FakeApiServer()
    async with client_for(server) as client:
        async with client.watch(NODES, resource_version=str(server.rv)) as events:
            server.expire_watches()
            with pytest.raises(GoneError):
                async for _ in events:
                    pass
        with pytest.raises(GoneError):
            async with client.watch(NODES, resource_version="1"):
                pass


async def test_watch_cut_mid_stream_raises_unreachable() -> None:
    server = FakeApiServer()
    types = []

    async def consume() -> None:
        async for ev in events:
            types.append(ev.type)

    async with (
        client_for(server) as client,
        client.watch(NODES, resource_version=str(server.rv)) as events,
    ):
        server.put_object("nodes", {"metadata": {"name": "n1"}})
        server.cut_watches()
        with pytest.raises(ApiUnreachableError):
            await consume()
    assert types == ["ADDED"]
