"""KubeClient and ClaimCache against the rig's real kube-apiserver."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
import trio

from dracpu.kube.claims import ClaimCache
from dracpu.kube.client import KubeClient
from dracpu.kube.errors import (
    AlreadyExistsError,
    ClaimMismatchError,
    ConflictError,
    NotFoundError,
)
from dracpu.kube.resources import DEVICE_CLASSES, NODES, RESOURCE_CLAIMS
from dracpu.kube.watch import Reflector
from tests.e2e.rig import Rig
from tests.kube.rig_support import create_node, rig_config, unique_node_name
from tests.kube.waiting import wait_for

pytestmark = pytest.mark.e2e


def client_for(rig: Rig) -> KubeClient:
    return KubeClient(rig_config(rig), rng=random.Random(3))


async def test_crud_and_typed_errors(rig: Rig) -> None:
    async with client_for(rig) as client:
        name = f"kube-e2e-{uuid.uuid4().hex[:8]}.example.com"
        body = {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass"}
        body["metadata"] = {"name": name}
        body["spec"] = {"selectors": [{"cel": {"expression": 'device.driver == "dra.cpu"'}}]}
        created = await client.create(DEVICE_CLASSES, body)
        try:
            with pytest.raises(AlreadyExistsError):
                await client.create(DEVICE_CLASSES, body)
            stale = dict(created)
            created["metadata"]["labels"] = {"a": "b"}
            updated = await client.update(DEVICE_CLASSES, created)
            assert updated["metadata"]["labels"] == {"a": "b"}
            stale["metadata"] = {**stale["metadata"], "labels": {"a": "c"}}
            with pytest.raises(ConflictError):
                await client.update(DEVICE_CLASSES, stale)
            obj, patched = await client.patch_if_needed(
                DEVICE_CLASSES, name, {"metadata": {"labels": {"a": "b"}}}
            )
            assert patched is False
            obj, patched = await client.patch_if_needed(
                DEVICE_CLASSES, name, {"metadata": {"labels": {"x": "y"}}}
            )
            assert patched is True
            assert obj["metadata"]["labels"] == {"a": "b", "x": "y"}
            with pytest.raises(ConflictError):
                await client.delete(DEVICE_CLASSES, name, uid="wrong-uid")
        finally:
            assert await client.delete(DEVICE_CLASSES, name) is True
        assert await client.delete(DEVICE_CLASSES, name) is False
        with pytest.raises(NotFoundError) as info:
            await client.get(DEVICE_CLASSES, name)
        assert info.value.reason == "NotFound"
        nodes = await client.list(NODES)
        assert rig.node_name in {n["metadata"]["name"] for n in nodes.items}
        assert nodes.resource_version


async def test_list_follows_continue_pages(rig: Rig) -> None:
    async with client_for(rig) as client:
        names = [unique_node_name() for _ in range(3)]
        for name in names:
            await create_node(client, name)
        try:
            before = client.request_counts["GET"]
            paged = await client.list(NODES, page_size=1, label_selector="e2e=kube")
            assert client.request_counts["GET"] - before >= len(paged.items) >= 3  # one per page
            whole = await client.list(NODES, label_selector="e2e=kube")
            assert {n["metadata"]["name"] for n in paged.items} >= set(names)
            assert [n["metadata"]["name"] for n in paged.items] == [
                n["metadata"]["name"] for n in whole.items
            ]
        finally:
            for name in names:
                await client.delete(NODES, name)


async def test_reflector_sees_changes_made_by_others(rig: Rig) -> None:
    async with client_for(rig) as client:
        node = unique_node_name()
        reflector = Reflector(client, NODES, field_selector=f"metadata.name={node}")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reflector.run)
            await reflector.synced.wait()
            assert reflector.store == {}
            await create_node(client, node)
            await wait_for(lambda: node in reflector.store)
            await client.delete(NODES, node)
            await wait_for(lambda: node not in reflector.store)
            nursery.cancel_scope.cancel()


def claim_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "devices": {
                "requests": [
                    {"name": "cpus", "exactly": {"deviceClassName": "dra.cpu", "count": 1}}
                ]
            }
        },
    }


async def allocate(client: KubeClient, claim: dict[str, Any], node: str) -> dict[str, Any]:
    claim = dict(claim)
    claim["status"] = {
        "allocation": {
            "devices": {
                "results": [
                    {"request": "cpus", "driver": "dra.cpu", "pool": node, "device": "cpudev000"}
                ]
            },
            "nodeSelector": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                ]
            },
        }
    }
    return await client.update_status(RESOURCE_CLAIMS, claim, namespace="default")


async def test_claim_get_and_watch_fed_cache(rig: Rig) -> None:
    node = unique_node_name()
    async with client_for(rig) as client:
        cache = ClaimCache(client, node_name=node)
        names = [f"kube-e2e-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cache.run)
                await cache.reflector.synced.wait()
                mine = await client.create(
                    RESOURCE_CLAIMS, claim_body(names[0]), namespace="default"
                )
                other = await client.create(
                    RESOURCE_CLAIMS, claim_body(names[1]), namespace="default"
                )
                pending = await client.create(
                    RESOURCE_CLAIMS, claim_body(names[2]), namespace="default"
                )
                mine = await allocate(client, mine, node)
                await allocate(client, other, "some-other-node")
                await wait_for(lambda: cache.cached("default", names[0]) is not None)
                assert cache.cached("default", names[1]) is None
                gets = client.request_counts["GET"]
                got = await cache.get("default", names[0], mine["metadata"]["uid"])
                assert got["status"]["allocation"]["devices"]["results"][0]["pool"] == node
                assert client.request_counts["GET"] == gets  # served from the cache
                with pytest.raises(ClaimMismatchError, match="got replaced"):
                    await cache.get("default", names[0], "00000000-0000-0000-0000-000000000000")
                with pytest.raises(ClaimMismatchError, match="not allocated"):
                    await cache.get("default", names[2], pending["metadata"]["uid"])
                with pytest.raises(NotFoundError):
                    await cache.get("default", "kube-e2e-missing", "u")
                await client.delete(RESOURCE_CLAIMS, names[0], namespace="default")
                await wait_for(lambda: cache.cached("default", names[0]) is None)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for name in names:
                    await client.delete(RESOURCE_CLAIMS, name, namespace="default")
