"""The claim status writer: our entries replace only ours, a stale cached copy conflicts and is
re-read, a vanished claim is dropped."""

from __future__ import annotations

import copy

import trio

from dracpu.core import node
from dracpu.core.claims import ClaimRef
from dracpu.daemon.claim_status import ClaimStatusWriter
from dracpu.kube.client import KubeClient
from tests.daemon.support import claim, grouped
from tests.kube.fake_apiserver import FakeApiServer, make_config
from tests.kube.waiting import wait_for

OURS = (
    {"driver": "dra.cpu", "pool": "node-a", "device": "cpudevnuma000", "data": {"cpuset": "2-3"}},
)


async def test_writes_through_a_stale_cache_and_keeps_other_drivers() -> None:
    fake = FakeApiServer()
    obj = claim("u1", [grouped("req", "cpudevnuma000", 2)])
    obj["status"]["devices"] = [{"driver": "gpu.example.com", "pool": "p", "device": "g0"}]
    fake.put_object("resourceclaims", obj)
    stale = copy.deepcopy(fake.objects["resourceclaims"]["ns/claim-u1"])
    fresh = copy.deepcopy(stale)
    fresh["metadata"]["labels"] = {"touched": "yes"}
    fake.put_object("resourceclaims", fresh)  # The cache's copy is now one version behind.
    async with KubeClient(make_config(), transport=fake.transport) as client:
        writer = ClaimStatusWriter(client, lookup=lambda ns, name: stale)
        writer.submit(node.WriteClaimStatus(ClaimRef("ns", "claim-u1", "u1"), OURS))
        writer.submit(node.WriteClaimStatus(ClaimRef("ns", "claim-gone", "u2"), OURS))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await wait_for(lambda: writer.pending == 0, 5)
            nursery.cancel_scope.cancel()
    stored = fake.objects["resourceclaims"]["ns/claim-u1"]
    assert stored["status"]["devices"] == [
        {"driver": "gpu.example.com", "pool": "p", "device": "g0"},
        OURS[0],
    ]
    assert stored["status"]["allocation"]  # The rest of the status is kept.
    puts = [p for m, p, _ in fake.requests if m == "PUT" and "claim-u1" in p]
    assert len(puts) == 2  # The stale copy's PUT conflicted; the re-read one went through.
    assert writer.written == 1
    assert writer.failed == 1  # claim-gone does not exist: dropped, not retried forever
