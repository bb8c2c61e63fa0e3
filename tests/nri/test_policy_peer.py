"""The pinning policy's NRI glue against the real runtime side of NRI (the Go peer), at every
pinned NRI version: exclusive pins in the CreateContainer adjustment, shared containers shrinking
through the same response and widening through UpdateContainers, rejections failing the create
with the policy's message, and Synchronize reconciliation (keep, re-pin, adopt, re-assert)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from dracpu.core import node
from dracpu.core.claims import ClaimRef
from dracpu.core.cpuset import CpuSet
from dracpu.core.node import NodeConfig, NodeState
from dracpu.core.slices import GroupBy
from dracpu.nri import Backoff, NriPlugin
from dracpu.nri.policy import POLICY_EVENTS, ContainerUpdater, PolicyHandler, StepDecider
from tests.nri.peer import NriPeer, PeerError, open_peer
from tests.support.claims import POOL, cpuset_config, grouped, parsed, prepare
from tests.support.topologies import make_topology

CONNECTED = "connected and synchronized"
# An upstream-format claim UID and env entry, written out literally (not through our helpers).
UPSTREAM_UID = "7f3c1c9e-2b0a-4c5e-9a51-0c2f1d3e4b5a"
UPSTREAM_ENV = f"DRA_CPUSET_{UPSTREAM_UID}=6-7"


def machine(*claims: tuple[str, str]) -> NodeState:
    """8 CPUs (0-7), one machine device, CPU 0 reserved; ``claims`` prepared as (uid, cpuset)."""
    topology = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=4, threads=2)
    config = NodeConfig(pool=POOL, group_by=GroupBy.MACHINE, reserved=CpuSet.of([0]))
    state = NodeState.initial(topology, config)
    for uid, cpus in claims:
        n = len(CpuSet.parse(cpus))
        state, _, results = prepare(
            state, parsed(uid, [grouped("cpudevmachine", n)], [cpuset_config(cpus)])
        )
        assert isinstance(results[uid], node.ClaimPrepared), results
    return state


def env(uid: str, cpus: str) -> str:
    return f"DRA_CPUSET_{uid}={cpus}"


def adjusted_cpus(response: dict[str, Any]) -> str:
    adjust = response.get("adjust", {})
    return str(adjust.get("linux", {}).get("resources", {}).get("cpu", {}).get("cpus", ""))


def update_cpus(updates: list[dict[str, Any]]) -> dict[str, str]:
    return {u["container_id"]: u["linux"]["resources"]["cpu"]["cpus"] for u in updates}


@asynccontextmanager
async def policy_plugin(
    peer: NriPeer, socket_path: str, decider: StepDecider
) -> AsyncIterator[tuple[NriPlugin, ContainerUpdater]]:
    """Our plugin with the policy handler and an updater task, registered with ``peer`` (the
    runtime logs it as connected), running until the block ends."""
    start = len(peer.events)
    plugin = NriPlugin(
        PolicyHandler(decider),
        name="dra.cpu",
        index="50",
        socket_path=socket_path,
        events=POLICY_EVENTS,
        backoff=Backoff(initial=0.05, maximum=0.5),
    )
    updater = ContainerUpdater(plugin)
    decider.on_updates = updater.submit
    async with trio.open_nursery() as nursery:
        nursery.start_soon(updater.run)
        await nursery.start(plugin.run)
        await peer.wait_log(CONNECTED, start=start)
        yield plugin, updater
        nursery.cancel_scope.cancel()


async def started_peer(nursery: trio.Nursery, binary: Path, socket_path: str) -> NriPeer:
    peer = await open_peer(nursery, binary)
    await peer.command("add-pod", pod="p0")
    await peer.command("add-pod", pod="p1")
    await peer.command("start", socket=socket_path)
    return peer


async def test_exclusive_pin_shrinks_then_unprepare_widens(
    nri_peer_binary: Path, socket_path: str
) -> None:
    decider = StepDecider(machine())
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peer = await started_peer(nursery, nri_peer_binary, socket_path)
            async with policy_plugin(peer, socket_path, decider):
                rsp = await peer.command("create", pod="p0", id="s1", env=["PATH=/bin"])
                assert adjusted_cpus(rsp) == "0-7"
                assert not decider.state.containers["s1"].claims
                # The kubelet prepares a claim; its container is created next.
                decider.apply_now(
                    node.Prepare(
                        (ClaimRef("default", "claim-c1", "c1"),),
                        {"c1": parsed("c1", [grouped("cpudevmachine", 2)], [cpuset_config("2-3")])},
                    )
                )
                rsp = await peer.command("create", pod="p1", id="e1", env=[env("c1", "2-3")])
                assert adjusted_cpus(rsp) == "2-3"
                assert update_cpus(rsp.get("update", [])) == {"s1": "0-1,4-7"}
                # The kubelet's CRI update would widen it: our reply keeps the pin.
                rsp = await peer.command("update", id="e1", cpus="0-7")
                assert update_cpus(rsp.get("update", [])) == {"e1": "2-3"}
                # The pod is gone, the claim unprepared: the shared container widens through
                # UpdateContainers, sent outside any NRI request.
                await peer.command("stop-container", id="e1")
                await peer.command("remove-container", id="e1")
                start = len(peer.events)
                decider.apply_now(node.Unprepare((ClaimRef("default", "claim-c1", "c1"),)))
                i = await peer.wait_event(lambda e: e.get("ev") == "update-containers", start=start)
                assert update_cpus(peer.events[i]["updates"]) == {"s1": "0-7"}
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("env_entries", "expected"),
    [
        ([env("c9", "2-3")], "claim c9, which is not prepared"),
        ([env("c1", "2-4")], "disagrees with the CPUs prepared"),
        (["DRA_CPUSET_c1=two"], "DRA_CPUSET_c1"),
    ],
    ids=["unknown-claim", "forged-cpus", "malformed"],
)
async def test_forged_env_fails_the_create(
    nri_peer_binary: Path, socket_path: str, env_entries: list[str], expected: str
) -> None:
    decider = StepDecider(machine(("c1", "2-3")))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peer = await started_peer(nursery, nri_peer_binary, socket_path)
            async with policy_plugin(peer, socket_path, decider):
                with pytest.raises(PeerError, match=expected):
                    await peer.command("create", pod="p0", id="bad", env=env_entries)
                assert "bad" not in decider.state.containers
            nursery.cancel_scope.cancel()


async def test_shared_claim_fails_the_create(nri_peer_binary: Path, socket_path: str) -> None:
    decider = StepDecider(machine(("c1", "1-7")))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peer = await started_peer(nursery, nri_peer_binary, socket_path)
            async with policy_plugin(peer, socket_path, decider):
                rsp = await peer.command("create", pod="p0", id="e1", env=[env("c1", "1-7")])
                assert adjusted_cpus(rsp) == "1-7"
                with pytest.raises(PeerError, match="already used by container 'ctr-e1'"):
                    await peer.command("create", pod="p1", id="e2", env=[env("c1", "1-7")])
            nursery.cancel_scope.cancel()


async def test_empty_shared_pool_fails_the_create(nri_peer_binary: Path, socket_path: str) -> None:
    every = machine()
    held_all = node.PreparedClaim(ClaimRef("", "", "c0"), CpuSet.parse("0-7"), adopted=True)
    decider = StepDecider(NodeState.initial(every.topology, every.config, [held_all]))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peer = await started_peer(nursery, nri_peer_binary, socket_path)
            async with policy_plugin(peer, socket_path, decider):
                with pytest.raises(PeerError, match="shared CPU pool is empty"):
                    await peer.command("create", pod="p1", id="s1", env=["PATH=/bin"])
            nursery.cancel_scope.cancel()


async def test_synchronize_keeps_repins_adopts_and_reasserts(
    nri_peer_binary: Path, socket_path: str
) -> None:
    """A node that ran the upstream driver: containers exist before dracpu connects."""
    decider = StepDecider(machine(("c1", "4-5")))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peer = await started_peer(nursery, nri_peer_binary, socket_path)
            # Created while no plugin is connected, with the cpusets they run on now.
            await peer.command("create", pod="p0", id="kept", env=[env("c1", "4-5")], cpus="4-5")
            await peer.command("create", pod="p1", id="up", env=[UPSTREAM_ENV], cpus="6-7")
            await peer.command("create", pod="p1", id="sh", env=["PATH=/bin"], cpus="0-7")
            start = len(peer.events)
            async with policy_plugin(peer, socket_path, decider):
                i = await peer.wait_event(lambda e: e.get("ev") == "synced", start=start)
                updates = update_cpus(peer.events[i].get("updates") or [])
                # kept: untouched; up: adopted, untouched; sh: re-asserted off both claims.
                assert updates == {"sh": "0-3"}
                state = decider.state
                assert state.claims[UPSTREAM_UID].adopted
                assert state.claims[UPSTREAM_UID].cpus == CpuSet.parse("6-7")
                assert state.containers["up"].claims == (UPSTREAM_UID,)
                assert any(
                    isinstance(e, node.WriteCdiSpec) and e.claim_uid == UPSTREAM_UID
                    for e in decider.effects
                )
            nursery.cancel_scope.cancel()


async def test_synchronize_repins_a_drifted_container(
    nri_peer_binary: Path, socket_path: str
) -> None:
    decider = StepDecider(machine(("c1", "4-5")))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peer = await started_peer(nursery, nri_peer_binary, socket_path)
            await peer.command("create", pod="p0", id="drift", env=[env("c1", "4-5")], cpus="0-7")
            start = len(peer.events)
            async with policy_plugin(peer, socket_path, decider):
                i = await peer.wait_event(lambda e: e.get("ev") == "synced", start=start)
                assert update_cpus(peer.events[i].get("updates") or []) == {"drift": "4-5"}
            nursery.cancel_scope.cancel()


async def test_dracpu_restart_moves_nothing(nri_peer_binary: Path, socket_path: str) -> None:
    """dracpu restarts from its checkpoint (claims only) and resynchronizes: no update at all."""
    first = StepDecider(machine(("c1", "2-3")))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peer = await started_peer(nursery, nri_peer_binary, socket_path)
            async with policy_plugin(peer, socket_path, first):
                e = await peer.command("create", pod="p0", id="e1", env=[env("c1", "2-3")])
                s = await peer.command("create", pod="p1", id="s1", env=["PATH=/bin"])
            # The peer records the cpusets the plugin set, as a runtime would have applied them.
            await peer.command("update", id="e1", cpus=adjusted_cpus(e))
            await peer.command("update", id="s1", cpus=adjusted_cpus(s))
            state = first.state
            restored = node.restore(node.snapshot(state), state.topology, state.config)
            second = StepDecider(restored)
            start = len(peer.events)
            async with policy_plugin(peer, socket_path, second) as (plugin, _):
                i = await peer.wait_event(lambda e: e.get("ev") == "synced", start=start)
                assert not peer.events[i].get("updates")
                assert second.state.containers["e1"].cpus == CpuSet.parse("2-3")
                assert second.state.owners["c1"].pod_uid == "uid-p0"
                assert plugin.sessions_synchronized == 1
            nursery.cancel_scope.cancel()


async def test_runtime_restart_keeps_claims_and_reasserts_shared(
    nri_peer_binary: Path, socket_path: str
) -> None:
    decider = StepDecider(machine(("c1", "2-3")))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peer = await started_peer(nursery, nri_peer_binary, socket_path)
            async with policy_plugin(peer, socket_path, decider) as (plugin, _):
                await peer.command("create", pod="p0", id="e1", env=[env("c1", "2-3")])
                peer.kill()
                restarted = await open_peer(nursery, nri_peer_binary)
                await restarted.command("populate", count=3, annotation_bytes=0)
                await restarted.command("start", socket=socket_path)
                await restarted.wait_log(CONNECTED)
                [synced] = [e for e in restarted.events if e.get("ev") == "synced" and e["updates"]]
                updates = update_cpus(synced["updates"])
                assert set(updates.values()) == {"0-1,4-7"}
                assert len(updates) == 3
                assert decider.state.claims["c1"].cpus == CpuSet.parse("2-3")
                assert decider.state.owners["c1"].container == "ctr-e1"
                assert plugin.sessions_synchronized == 2
            nursery.cancel_scope.cancel()
