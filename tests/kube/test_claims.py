"""ClaimCache against the fake server: watch-fed hits, GET fallback, UID and allocation checks."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio

from dracpu.kube.claims import ClaimCache, allocated_to_node
from dracpu.kube.client import KubeClient
from dracpu.kube.errors import ClaimMismatchError, NotFoundError
from tests.kube.fake_apiserver import FakeApiServer, make_config

NODE = "node-a"


def claim(name: str, *, pool: str | None = NODE, driver: str = "dra.cpu", ns: str = "ns") -> Any:
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": ns}, "spec": {}}
    if pool is not None:
        obj["status"] = {
            "allocation": {
                "devices": {
                    "results": [{"request": "cpus", "driver": driver, "pool": pool, "device": "d0"}]
                }
            }
        }
    return obj


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (claim("a"), True),
        (claim("a", pool="node-b"), False),
        (claim("a", driver="gpu.example.com"), False),
        (claim("a", pool=None), False),
        (
            {
                "status": {
                    "allocation": {
                        "devices": {"results": [{"driver": "dra.cpu", "pool": "p"}]},
                        "nodeSelector": {
                            "nodeSelectorTerms": [
                                {
                                    "matchFields": [
                                        {"key": "metadata.name", "operator": "In", "values": [NODE]}
                                    ]
                                }
                            ]
                        },
                    }
                }
            },
            True,
        ),
    ],
    ids=["our-pool", "other-node", "other-driver", "unallocated", "node-selector"],
)
def test_allocated_to_node(obj: Any, expected: bool) -> None:
    assert allocated_to_node(obj, node=NODE, driver="dra.cpu", pool=NODE) is expected


async def test_cache_hits_after_watch_and_falls_back_to_get() -> None:
    server = FakeApiServer()
    mine = server.put_object("resourceclaims", claim("mine"))
    server.put_object("resourceclaims", claim("theirs", pool="node-b"))
    client = KubeClient(make_config(), transport=server.transport, rng=random.Random(1))
    cache = ClaimCache(client, node_name=NODE)
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(cache.run)
        await cache.reflector.synced.wait()
        assert [c["metadata"]["name"] for c in cache.claims()] == ["mine"]
        got = await cache.get("ns", "mine", mine["metadata"]["uid"])
        assert got["metadata"]["name"] == "mine"
        assert (cache.hits, cache.misses) == (1, 0)
        gets_before = len(server.requests)
        await cache.get("ns", "mine", mine["metadata"]["uid"])
        assert len(server.requests) == gets_before  # no API round trip
        # A claim allocated a moment ago: not yet seen via watch? GET fallback works anyway.
        server.watchers.clear()  # the watch goes silent
        fresh = server.put_object("resourceclaims", claim("fresh"))
        await cache.get("ns", "fresh", fresh["metadata"]["uid"])
        assert cache.misses == 1
        assert cache.cached("ns", "fresh") is not None
        with pytest.raises(ClaimMismatchError, match="got replaced"):
            await cache.get("ns", "mine", "another-uid")
        unalloc = server.put_object("resourceclaims", claim("pending", pool=None))
        with pytest.raises(ClaimMismatchError, match="not allocated"):
            await cache.get("ns", "pending", unalloc["metadata"]["uid"])
        with pytest.raises(NotFoundError):
            await cache.get("ns", "missing", "u")
        nursery.cancel_scope.cancel()
