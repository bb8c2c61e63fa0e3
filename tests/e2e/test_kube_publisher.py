"""SlicePublisher against the rig's real kube-apiserver (and a second one with a gate off).

Each test creates its own Node object, so its slices are its own; deleting the Node at the end
also exercises the ownerReference (the rig's garbage collector removes the slices). Slices are
checked through the rig's independent httpx client (``kube`` fixture), not through our client.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dracpu.backoff import Backoff
from dracpu.kube.client import KubeClient
from dracpu.kube.config import KubeConfig
from dracpu.kube.errors import InvalidError
from dracpu.kube.publisher import SlicePublisher
from dracpu.kube.resources import NODES, RESOURCE_SLICES
from tests.e2e.rig import Rig
from tests.kube.rig_support import (
    CuttableTransport,
    create_node,
    extra_apiserver,
    free_port,
    raw_client,
    rig_config,
    unique_node_name,
)
from tests.kube.specs import make_specs
from tests.kube.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
async def kube(rig: Rig) -> AsyncIterator[httpx.AsyncClient]:
    """Independent raw view of the rig's apiserver (not our client)."""
    async with raw_client(rig) as client:
        yield client


SLICES = "/apis/resource.k8s.io/v1/resourceslices"


async def node_slices(kube: httpx.AsyncClient, node: str) -> list[dict[str, Any]]:
    r = await kube.get(
        SLICES, params={"fieldSelector": f"spec.nodeName={node},spec.driver=dra.cpu"}
    )
    r.raise_for_status()
    items: list[dict[str, Any]] = r.json()["items"]
    return items


@asynccontextmanager
async def publishing(
    config: KubeConfig, node: str | None = None
) -> AsyncIterator[tuple[SlicePublisher, KubeClient, CuttableTransport, dict[str, Any]]]:
    """A Node of our own and a running publisher for it; the Node is deleted afterwards."""
    transport = CuttableTransport(config)
    client = KubeClient(config, transport=transport, rng=random.Random(7))
    node = node or unique_node_name()
    async with client:
        node_obj = await create_node(client, node)
        publisher = SlicePublisher(
            client,
            node_name=node,
            rng=random.Random(8),
            watch_backoff=Backoff(initial=0.1, maximum=2.0),
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher.run)
                yield publisher, client, transport, node_obj
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await client.delete(NODES, node)
                await client.delete_collection(
                    RESOURCE_SLICES, field_selector=f"spec.nodeName={node}"
                )


async def test_publish_8x128_with_owner_and_no_writes_when_idle(
    rig: Rig, kube: httpx.AsyncClient
) -> None:
    async with publishing(rig_config(rig)) as (publisher, client, _, node_obj):
        node = node_obj["metadata"]["name"]
        publisher.set_desired(make_specs(node))
        with trio.fail_after(60):
            await publisher.in_sync.wait()
        got = await node_slices(kube, node)
        assert len(got) == 8
        names = sorted(o["metadata"]["name"] for o in got)
        assert [n[:6] for n in names] == [f"{i:05x}-" for i in range(8)]
        for obj in got:
            assert obj["spec"]["pool"] == {"name": node, "generation": 1, "resourceSliceCount": 8}
            assert len(obj["spec"]["devices"]) == 128
            assert obj["metadata"]["ownerReferences"] == [
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "name": node,
                    "uid": node_obj["metadata"]["uid"],
                    "controller": True,
                }
            ]
        versions = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in got}
        writes = client.writes
        await trio.sleep(5)
        assert client.writes == writes
        again = {
            o["metadata"]["name"]: o["metadata"]["resourceVersion"]
            for o in await node_slices(kube, node)
        }
        assert again == versions
        assert publisher.health().ok


async def test_spec_change_is_published_with_a_new_generation(
    rig: Rig, kube: httpx.AsyncClient
) -> None:
    async with publishing(rig_config(rig)) as (publisher, _, _, node_obj):
        node = node_obj["metadata"]["name"]
        publisher.set_desired(make_specs(node, slices=4, per_slice=32))
        with trio.fail_after(60):
            await publisher.in_sync.wait()
        # Fewer CPUs (reserved CPUs grew) and grouped mode: consumable devices.
        publisher.set_desired(make_specs(node, slices=2, per_slice=30, consumable=True))
        with trio.fail_after(60):
            await publisher.in_sync.wait()
        got = await node_slices(kube, node)
        assert len(got) == 2
        assert {o["spec"]["pool"]["generation"] for o in got} == {2}
        assert {o["spec"]["pool"]["resourceSliceCount"] for o in got} == {2}
        assert all(
            d.get("allowMultipleAllocations") is True for o in got for d in o["spec"]["devices"]
        )
        assert publisher.health().missing_feature_gates == ()


async def test_all_slices_deleted_are_recreated_within_two_seconds(
    rig: Rig, kube: httpx.AsyncClient
) -> None:
    async with publishing(rig_config(rig)) as (publisher, _, _, node_obj):
        node = node_obj["metadata"]["name"]
        publisher.set_desired(make_specs(node, slices=8, per_slice=16))
        with trio.fail_after(60):
            await publisher.in_sync.wait()
        await wait_for(lambda: len(publisher.reflector.store) == 8)
        start = trio.current_time()
        # What the kubelet does at start-up and after the plugin went away.
        r = await kube.delete(SLICES, params={"fieldSelector": f"spec.nodeName={node}"})
        r.raise_for_status()
        with trio.fail_after(10):
            while True:
                got = await node_slices(kube, node)
                if len(got) == 8 and {o["spec"]["pool"]["generation"] for o in got} == {2}:
                    break
                await trio.sleep(0.02)
        elapsed = trio.current_time() - start
        assert elapsed < 2.0, f"recreation took {elapsed:.2f}s"


async def test_watch_cut_resumes_without_relist_and_repairs_a_deletion(
    rig: Rig, kube: httpx.AsyncClient
) -> None:
    async with publishing(rig_config(rig)) as (publisher, _, transport, node_obj):
        node = node_obj["metadata"]["name"]
        publisher.set_desired(make_specs(node, slices=2, per_slice=8))
        with trio.fail_after(60):
            await publisher.in_sync.wait()
        assert transport.cut_watches() >= 1
        victim = (await node_slices(kube, node))[0]["metadata"]["name"]
        (await kube.delete(f"{SLICES}/{victim}")).raise_for_status()
        with trio.fail_after(20):
            while True:
                got = await node_slices(kube, node)
                if len(got) == 2 and victim not in {o["metadata"]["name"] for o in got}:
                    break
                await trio.sleep(0.05)
        assert publisher.reflector.lists == 1  # resumed from its resourceVersion
        assert publisher.reflector.watches >= 2


async def test_node_deletion_garbage_collects_the_slices(rig: Rig, kube: httpx.AsyncClient) -> None:
    async with publishing(rig_config(rig)) as (publisher, client, _, node_obj):
        node = node_obj["metadata"]["name"]
        publisher.set_desired(make_specs(node, slices=2, per_slice=4))
        with trio.fail_after(60):
            await publisher.in_sync.wait()
        await client.delete(NODES, node)
        # The garbage collector (kube-controller-manager) follows the ownerReference; the
        # publisher cannot re-create them without the Node and reports that instead.
        with trio.fail_after(60):
            while await node_slices(kube, node):  # noqa: ASYNC110 - polling the API server
                await trio.sleep(0.5)
        await wait_for(lambda: publisher.health().state == "error", 30)
        assert "404" in (publisher.health().last_error or "")


async def test_invalid_slice_is_rejected_with_the_api_cause(rig: Rig) -> None:
    async with publishing(rig_config(rig)) as (publisher, client, _, node_obj):
        node = node_obj["metadata"]["name"]
        specs = make_specs(node, slices=1, per_slice=2)
        specs[0]["devices"][1]["name"] = "Not_A_DNS_Label"
        # Through the client: the typed error carries the field path.
        body = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice"}
        body["metadata"] = {"generateName": "bad-"}
        body["spec"] = {
            **specs[0],
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
        }
        with pytest.raises(InvalidError) as info:
            await client.create(RESOURCE_SLICES, body)
        assert any(c.field == "spec.devices[1].name" for c in info.value.causes)
        # Through the publisher: reported in health, not raised.
        publisher.set_desired(specs)
        await wait_for(lambda: publisher.health().state == "error", 30)
        assert "spec.devices[1].name" in (publisher.health().last_error or "")


async def test_dropped_field_detected_on_apiserver_with_gate_off(
    rig: Rig, kube: httpx.AsyncClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dracpu.kube")
    async with extra_apiserver(
        rig,
        port=free_port(),
        gates={"DRAConsumableCapacity": False},
        # Loopback advertise address: no endpoint reconciler (harmless if the rig passes it too).
        extra_args=["--endpoint-reconciler-type=none"],
        log_path=tmp_path / "apiserver.log",
    ) as url:
        config = rig_config(rig, url)
        async with publishing(config) as (publisher, client, _, node_obj):
            node = node_obj["metadata"]["name"]
            publisher.set_desired(make_specs(node, slices=2, per_slice=4, consumable=True))
            with trio.fail_after(60):
                await publisher.in_sync.wait()
            writes = client.writes
            await trio.sleep(3)
            health = publisher.health()
            assert client.writes == writes  # no rewrite loop
            stored = await client.list(
                RESOURCE_SLICES, field_selector=f"spec.nodeName={node},spec.driver=dra.cpu"
            )
    assert health.missing_feature_gates == ("DRAConsumableCapacity",)
    assert "devices[0].allowMultipleAllocations" in health.dropped_fields
    assert all(
        "allowMultipleAllocations" not in d for o in stored.items for d in o["spec"]["devices"]
    )
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1
    assert "DRAConsumableCapacity" in lines[0]


SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"


@pytest.mark.parametrize("mode", ["individual", "grouped"])
async def test_core_model_specs_publish_and_stay_quiet(
    rig: Rig, kube: httpx.AsyncClient, mode: str
) -> None:
    """The core slice model's output for a real machine is accepted and compares as unchanged."""
    fixture = SHARED / "fixtures" / "sysfs" / "server" / "sys"
    if not fixture.is_dir():
        pytest.skip(f"needs the shared sysfs captures at {fixture}")
    from dracpu.core.slices import DeviceMode, SliceOptions, build_slice_specs
    from dracpu.sysfs import read_topology

    topology = read_topology(fixture)
    async with publishing(rig_config(rig)) as (publisher, client, _, node_obj):
        node = node_obj["metadata"]["name"]
        specs = build_slice_specs(topology, SliceOptions(node_name=node, mode=DeviceMode(mode)))
        publisher.set_desired(specs)
        with trio.fail_after(60):
            await publisher.in_sync.wait()
        writes = client.writes
        await trio.sleep(3)
        assert client.writes == writes
        health = publisher.health()
        assert health.ok, health
        got = await node_slices(kube, node)
        assert sum(len(o["spec"]["devices"]) for o in got) == sum(len(s["devices"]) for s in specs)


async def test_apiserver_down_then_back_is_caught_up(rig: Rig, tmp_path: Path) -> None:
    """A real apiserver stops while the desired slices change; the publisher retries with
    backoff, reports it, and publishes the new state once the apiserver is back."""
    port, prefix = free_port(), f"/dracpu-kube-e2e-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path / "apiserver.log"

    def server() -> Any:
        return extra_apiserver(
            rig,
            port=port,
            gates={},
            log_path=log_path,
            extra_args=["--endpoint-reconciler-type=none"],
            etcd_prefix=prefix,
            crash=True,
        )

    config = rig_config(rig, f"https://127.0.0.1:{port}")
    node = unique_node_name()
    async with KubeClient(config, rng=random.Random(9)) as client:
        publisher = SlicePublisher(
            client, node_name=node, watch_backoff=Backoff(initial=0.2, maximum=2.0)
        )
        async with trio.open_nursery() as nursery:
            async with server():
                await create_node(client, node)
                nursery.start_soon(publisher.run)
                publisher.set_desired(make_specs(node, slices=2, per_slice=8))
                with trio.fail_after(60):
                    await publisher.in_sync.wait()
            # The apiserver is gone now.
            publisher.set_desired(make_specs(node, slices=3, per_slice=8))
            await wait_for(lambda: not publisher.health().api_reachable, 30)
            assert publisher.health().state != "in-sync"
            await trio.sleep(3)
            async with server():
                with trio.fail_after(60):
                    await publisher.in_sync.wait()
                stored = await client.list(
                    RESOURCE_SLICES, field_selector=f"spec.nodeName={node},spec.driver=dra.cpu"
                )
                await client.delete(NODES, node)
            nursery.cancel_scope.cancel()
    assert len(stored.items) == 3
    assert {o["spec"]["pool"]["generation"] for o in stored.items} == {2}
