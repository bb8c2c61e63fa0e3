"""Reflector against the fake server: resume after a cut, relist on 410, backoff while down."""

from __future__ import annotations

import random

import trio

from dracpu.backoff import Backoff
from dracpu.kube.client import KubeClient, RetryPolicy
from dracpu.kube.resources import NODES
from dracpu.kube.watch import Change, Reflector
from tests.kube.fake_apiserver import FakeApiServer, Fault, make_config
from tests.kube.waiting import wait_for


def node(name: str, label: str = "x") -> dict[str, object]:
    return {"metadata": {"name": name, "labels": {"l": label}}}


def make(server: FakeApiServer, **kw: object) -> tuple[KubeClient, Reflector, list[Change]]:
    client = KubeClient(
        make_config(),
        transport=server.transport,
        retry=RetryPolicy(attempts=1),
        rng=random.Random(2),
    )
    changes: list[Change] = []
    reflector = Reflector(client, NODES, on_change=changes.append, rng=random.Random(3), **kw)  # type: ignore[arg-type]
    return client, reflector, changes


async def test_list_then_watch_keeps_the_store_current() -> None:
    server = FakeApiServer()
    server.put_object("nodes", node("a"))
    client, reflector, changes = make(server)
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(reflector.run)
        await reflector.synced.wait()
        assert set(reflector.store) == {"a"}
        server.put_object("nodes", node("b"))
        server.put_object("nodes", node("a", "y"))
        server.remove_object("nodes", "b")
        await wait_for(lambda: reflector.store["a"]["metadata"]["labels"] == {"l": "y"})
        await wait_for(lambda: "b" not in reflector.store)
        server.bookmark()
        await wait_for(lambda: reflector.resource_version == str(server.rv))
        nursery.cancel_scope.cancel()
    assert [c.kind for c in changes] == ["RELISTED", "ADDED", "MODIFIED", "DELETED"]


async def test_cut_watch_resumes_from_last_version_without_relisting() -> None:
    server = FakeApiServer()
    client, reflector, _ = make(server)
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(reflector.run)
        await reflector.synced.wait()
        server.put_object("nodes", node("a"))
        await wait_for(lambda: "a" in reflector.store)
        seen_rv = reflector.resource_version
        server.cut_watches()
        server.put_object("nodes", node("b"))  # happens while disconnected
        await wait_for(lambda: "b" in reflector.store)
        nursery.cancel_scope.cancel()
    assert reflector.lists == 1
    watches = [p for m, _, p in server.requests if p.get("watch") == "true"]
    assert watches[-1]["resourceVersion"] == seen_rv


async def test_410_gone_relists_and_catches_up() -> None:
    server = FakeApiServer()
    server.put_object("nodes", node("a"))
    client, reflector, changes = make(server)
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(reflector.run)
        await reflector.synced.wait()
        # Changes happen while disconnected, then history is compacted past our version.
        server.cut_watches()
        server.remove_object("nodes", "a")
        server.put_object("nodes", node("c"))
        server.compacted_rv = server.rv
        await wait_for(lambda: reflector.lists == 2)
        await wait_for(lambda: set(reflector.store) == {"c"})
        server.expire_watches()
        await wait_for(lambda: reflector.lists == 3)
        nursery.cancel_scope.cancel()
    assert sum(1 for c in changes if c.kind == "RELISTED") == 3


async def test_down_at_start_backs_off_then_syncs(autojump_clock: trio.abc.Clock) -> None:
    server = FakeApiServer()
    server.down = True
    client, reflector, _ = make(server, backoff=Backoff(initial=0.5, maximum=8.0))
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(reflector.run)
        await trio.sleep(120)
        assert not reflector.synced.is_set()
        assert reflector.healthy is False
        assert "connection refused" in (reflector.last_error or "")
        # 120 s of downtime with a cap of 8 s: a bounded number of attempts, not a tight loop.
        assert 10 <= len(server.requests) <= 25
        server.down = False
        server.put_object("nodes", node("a"))
        await trio.sleep(9)
        assert reflector.synced.is_set()
        assert set(reflector.store) == {"a"}
        nursery.cancel_scope.cancel()


async def test_watch_errors_and_empty_streams_do_not_spin(autojump_clock: trio.abc.Clock) -> None:
    server = FakeApiServer()
    server.faults.append(Fault(code=500, watch=True, times=1000))
    client, reflector, _ = make(server, backoff=Backoff(initial=1.0, maximum=10.0))
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(reflector.run)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    watch_calls = [r for r in server.requests if r[2].get("watch") == "true"]
    assert 5 <= len(watch_calls) <= 20


async def test_repeated_resume_failures_fall_back_to_a_fresh_list(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A server whose etcd was replaced does not know our resourceVersion: relist, don't loop."""
    server = FakeApiServer()
    server.put_object("nodes", node("a"))
    client, reflector, _ = make(server, backoff=Backoff(initial=0.5, maximum=4.0))
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(reflector.run)
        await reflector.synced.wait()
        # Every watch now fails (as a "too large resource version" 504 would) ...
        server.faults.append(Fault(code=504, watch=True, times=3))
        server.cut_watches()
        # ... and the new server has other objects.
        server.remove_object("nodes", "a")
        server.put_object("nodes", node("b"))
        server.log.clear()
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert 2 <= reflector.lists <= 4
    assert set(reflector.store) == {"b"}


MANAGED = [{"manager": "kube-scheduler", "operation": "Update", "fieldsV1": {"f:status": {}}}]


def managed_node(name: str, label: str = "x") -> dict[str, object]:
    return {"metadata": {"name": name, "labels": {"l": label}, "managedFields": MANAGED}}


async def test_the_store_keeps_objects_without_their_managed_fields() -> None:
    """Listed, watched and remembered objects alike; the caller's own object is not changed."""
    server = FakeApiServer()
    server.put_object("nodes", managed_node("a"))
    client, reflector, _ = make(server)
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(reflector.run)
        await reflector.synced.wait()
        assert reflector.store["a"]["metadata"] == {
            k: v
            for k, v in server.objects["nodes"]["a"]["metadata"].items()
            if k != "managedFields"
        }
        server.put_object("nodes", managed_node("b"))
        await wait_for(lambda: "b" in reflector.store)
        assert "managedFields" not in reflector.store["b"]["metadata"]
        answer = {**managed_node("c"), "kind": "Node"}
        reflector.remember(answer)
        assert "managedFields" not in reflector.store["c"]["metadata"]
        assert answer["metadata"]["managedFields"] == MANAGED  # type: ignore[index]
        assert reflector.store["c"]["kind"] == "Node"
        nursery.cancel_scope.cancel()
    assert "managedFields" in server.objects["nodes"]["a"]["metadata"]
