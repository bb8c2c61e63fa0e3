"""SlicePublisher against the fake server: publish, idle, wipe, change, drops, outages."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from dracpu.backoff import Backoff
from dracpu.kube.client import KubeClient, RetryPolicy
from dracpu.kube.publisher import SlicePublisher
from tests.kube.fake_apiserver import FakeApiServer, Fault, make_config, status
from tests.kube.specs import make_specs
from tests.kube.waiting import wait_for

NODE = "node-a"


def slices(server: FakeApiServer) -> list[dict[str, object]]:
    return list(server.objects.get("resourceslices", {}).values())


@asynccontextmanager
async def running(
    server: FakeApiServer, **kw: object
) -> AsyncIterator[tuple[SlicePublisher, KubeClient]]:
    if "nodes" not in server.objects:
        server.put_object("nodes", {"metadata": {"name": NODE, "uid": "node-uid"}})
    client = KubeClient(
        make_config(),
        transport=server.transport,
        retry=RetryPolicy(attempts=2),
        rng=random.Random(5),
    )
    publisher = SlicePublisher(
        client,
        node_name=NODE,
        rng=random.Random(6),
        watch_backoff=Backoff(initial=0.1, maximum=5.0),
        **kw,  # type: ignore[arg-type]
    )
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run)
        yield publisher, client
        nursery.cancel_scope.cancel()


async def test_publish_then_zero_writes_while_idle(autojump_clock: trio.abc.Clock) -> None:
    server = FakeApiServer()
    async with running(server) as (publisher, client):
        publisher.set_desired(make_specs(NODE))
        await publisher.in_sync.wait()
        objs = slices(server)
        assert len(objs) == 8
        for obj in objs:
            assert obj["spec"]["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 8}  # type: ignore[index]
            assert obj["metadata"]["ownerReferences"][0]["uid"] == "node-uid"  # type: ignore[index]
        writes = client.writes
        assert writes == 8
        # Ten quiet minutes, with a few watch reconnects and bookmarks along the way.
        for _ in range(10):
            await trio.sleep(60)
            server.bookmark()
        server.cut_watches()
        await trio.sleep(60)
        assert client.writes == writes
        health = publisher.health()
        assert health.ok
        assert (health.slices, health.generation, health.creates) == (8, 1, 8)


async def test_wipe_by_the_kubelet_is_repaired_quickly() -> None:
    server = FakeApiServer()
    async with running(server) as (publisher, client):
        publisher.set_desired(make_specs(NODE))
        await publisher.in_sync.wait()
        await wait_for(lambda: len(publisher.reflector.store) == 8)
        start = trio.current_time()
        await client.delete_collection(
            publisher.reflector.resource, field_selector=f"spec.nodeName={NODE}"
        )
        await wait_for(lambda: len(slices(server)) == 8)
        elapsed = trio.current_time() - start
        await wait_for(lambda: publisher.health().state == "in-sync")
    assert elapsed < 2.0
    assert {o["spec"]["pool"]["generation"] for o in slices(server)} == {2}  # type: ignore[index]


async def test_changed_specs_are_republished_with_a_new_generation() -> None:
    server = FakeApiServer()
    async with running(server) as (publisher, _):
        publisher.set_desired(make_specs(NODE, slices=4, per_slice=16))
        await publisher.in_sync.wait()
        publisher.set_desired(make_specs(NODE, slices=2, per_slice=16, numa=1))
        await publisher.in_sync.wait()
        objs = slices(server)
    assert len(objs) == 2
    assert {o["spec"]["pool"]["generation"] for o in objs} == {2}  # type: ignore[index]
    assert {o["spec"]["pool"]["resourceSliceCount"] for o in objs} == {2}  # type: ignore[index]
    assert objs[0]["spec"]["devices"][0]["attributes"]["dra.cpu/numaNodeID"] == {"int": 1}  # type: ignore[index]


async def test_dropped_fields_reported_once_and_not_rewritten(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeApiServer()
    server.drop_on_write = {"allowMultipleAllocations"}
    caplog.set_level(logging.WARNING, logger="dracpu.kube")
    async with running(server) as (publisher, client):
        publisher.set_desired(make_specs(NODE, slices=2, per_slice=4, consumable=True))
        await publisher.in_sync.wait()
        writes = client.writes
        await trio.sleep(300)
        assert client.writes == writes == 2
        health = publisher.health()
    assert health.missing_feature_gates == ("DRAConsumableCapacity",)
    assert "devices[0].allowMultipleAllocations" in health.dropped_fields
    assert not health.ok
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1
    assert "DRAConsumableCapacity" in lines[0]
    assert "allowMultipleAllocations" in lines[0]


async def test_unreachable_at_start_then_catches_up(autojump_clock: trio.abc.Clock) -> None:
    server = FakeApiServer()
    server.put_object("nodes", {"metadata": {"name": NODE, "uid": "node-uid"}})
    server.down = True
    async with running(server) as (publisher, _):
        publisher.set_desired(make_specs(NODE, slices=2, per_slice=4))
        await trio.sleep(60)
        health = publisher.health()
        assert health.state == "starting"
        assert health.api_reachable is False
        # Capped at 5 s between list attempts (2 tries each): no tight loop.
        assert len(server.requests) < 50
        server.down = False
        await trio.sleep(35)
        assert publisher.health().state == "in-sync"
    assert len(slices(server)) == 2


async def test_outage_after_start_then_recovery(autojump_clock: trio.abc.Clock) -> None:
    server = FakeApiServer()
    async with running(server) as (publisher, _):
        publisher.set_desired(make_specs(NODE, slices=2, per_slice=4))
        await publisher.in_sync.wait()
        server.down = True
        server.cut_watches()
        publisher.set_desired(make_specs(NODE, slices=3, per_slice=4))
        await trio.sleep(120)
        assert publisher.health().state != "in-sync"
        server.down = False
        await trio.sleep(35)
        assert publisher.health().state == "in-sync"
    assert len(slices(server)) == 3


async def test_invalid_slice_is_reported_with_causes_and_retried_slowly(
    autojump_clock: trio.abc.Clock,
) -> None:
    server = FakeApiServer()
    causes = [{"reason": "FieldValueInvalid", "message": "bad", "field": "spec.devices[0].name"}]
    server.faults.append(
        Fault(code=422, method="POST", times=1000, body=status(422, "Invalid", "bad", causes))
    )
    async with running(server) as (publisher, _):
        publisher.set_desired(make_specs(NODE, slices=1, per_slice=1))
        await trio.sleep(600)
        health = publisher.health()
    assert health.state == "error"
    assert "spec.devices[0].name: bad" in (health.last_error or "")
    # 10 minutes with a 5 s → 300 s backoff: a handful of attempts.
    assert 3 <= server.faults[0].hits <= 10


async def test_conflict_is_retried_after_the_watch_catches_up() -> None:
    server = FakeApiServer()
    async with running(server) as (publisher, _):
        publisher.set_desired(make_specs(NODE, slices=2, per_slice=4))
        await publisher.in_sync.wait()
        server.faults.append(Fault(code=409, method="PUT", times=1))
        publisher.set_desired(make_specs(NODE, slices=2, per_slice=4, numa=1))
        await publisher.in_sync.wait()
    assert server.faults[0].hits == 1
    assert {o["spec"]["pool"]["generation"] for o in slices(server)} == {2}  # type: ignore[index]


async def test_bad_desired_spec_is_rejected_synchronously() -> None:
    server = FakeApiServer()
    async with running(server) as (publisher, _):
        specs = make_specs("other-node", slices=1, per_slice=1)
        with pytest.raises(ValueError, match=r"spec\.nodeName"):
            publisher.set_desired(specs)


async def test_missing_node_is_an_error_in_health(autojump_clock: trio.abc.Clock) -> None:
    server = FakeApiServer()
    server.put_object("nodes", {"metadata": {"name": "someone-else"}})
    async with running(server) as (publisher, _):
        publisher.set_desired(make_specs(NODE, slices=1, per_slice=1))
        await trio.sleep(10)
        health = publisher.health()
        assert health.state == "error"
        assert "Node 'node-a' not found" in (health.last_error or "")
        assert not slices(server)
        server.put_object("nodes", {"metadata": {"name": NODE, "uid": "late-uid"}})
        await trio.sleep(40)
        assert publisher.health().state == "in-sync"
    assert slices(server)[0]["metadata"]["ownerReferences"][0]["uid"] == "late-uid"  # type: ignore[index]
