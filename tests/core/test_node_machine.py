"""The node state machine as a hypothesis RuleBasedStateMachine.

A model keeps what each successful prepare returned; after every step: no CPU is in two claims,
none is lost (``held`` is exactly the union of the claims, each claim keeps the CPUs it got),
reserved CPUs are never assigned, prepare and unprepare are idempotent, exclusive containers run
on exactly their claims' CPUs and no shared container runs on an exclusive container's CPUs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dracpu.core.cdi import env_entry
from dracpu.core.claims import ClaimRef
from dracpu.core.cpuset import CpuSet
from dracpu.core.node import (
    AdjustContainer,
    ClaimPrepared,
    ContainerCreated,
    ContainerRemoved,
    ContainerUpdating,
    NodeConfig,
    NodeState,
    RejectContainer,
    ReplySynchronize,
    ReplyUpdate,
    RuntimeSynchronized,
    TopologyChanged,
    Unprepare,
    UpdateContainers,
    step,
)
from dracpu.core.pinning import ContainerInfo, ContainerUpdate, PodInfo
from dracpu.core.slices import DeviceMode, GroupBy
from dracpu.core.topology import Topology
from tests.support.claims import cpuset_config, grouped, individual, parsed, prepare
from tests.support.topologies import make_topology

UIDS = [f"c{i}" for i in range(6)]
CONTAINERS = [f"k{i}" for i in range(6)]
RESERVED = CpuSet.of([0])


def _machine(offline: tuple[int, ...] = ()) -> Topology:
    """2 NUMA nodes x 3 cores x SMT-2 = 12 CPUs; CPU 0 (reserved) never goes offline."""
    return make_topology(sockets=1, numa_per_socket=2, cores_per_numa=3, threads=2, offline=offline)


TOPOLOGIES = [_machine(), _machine((5,)), _machine((3, 9)), _machine((11,))]


class NodeMachine(RuleBasedStateMachine):
    state: NodeState
    got: dict[str, CpuSet]
    """The model: claim UID → the CPUs its first successful prepare returned."""

    @initialize(
        mode=st.sampled_from(
            [
                (DeviceMode.GROUPED, GroupBy.NUMANODE),
                (DeviceMode.GROUPED, GroupBy.MACHINE),
                (DeviceMode.INDIVIDUAL, GroupBy.NUMANODE),
            ]
        )
    )
    def start(self, mode: tuple[DeviceMode, GroupBy]) -> None:
        config = NodeConfig(pool="node-1", mode=mode[0], group_by=mode[1], reserved=RESERVED)
        self.state = NodeState.initial(TOPOLOGIES[0], config)
        self.got = {}
        self.last_sync: tuple[NodeState, Any] | None = None

    # --- kubelet ---

    @rule(uid=st.sampled_from(UIDS), data=st.data())
    def prepare(self, uid: str, data: st.DataObject) -> None:
        state = self.state
        devices = list(state.devices)
        if state.config.mode is DeviceMode.INDIVIDUAL:
            names = data.draw(
                st.lists(st.sampled_from(devices), min_size=1, max_size=3, unique=True)
            )
            claim = parsed(uid, [individual(n, f"r{i}") for i, n in enumerate(names)])
            wanted = CpuSet()
            for n in names:
                wanted = wanted | state.devices[n]
            fits = wanted.isdisjoint(state.held) and len(wanted) == len(names)
        else:
            device = data.draw(st.sampled_from(devices))
            count = data.draw(st.integers(1, 6))
            available = state.devices[device] - state.held
            if data.draw(st.booleans()):
                cpus = data.draw(
                    st.sets(st.sampled_from(sorted(state.topology.online)), min_size=1, max_size=4)
                )
                chosen = CpuSet.of(cpus)
                claim = parsed(uid, [grouped(device, len(chosen))], [cpuset_config(str(chosen))])
                fits = chosen <= available
            else:
                claim = parsed(uid, [grouped(device, count)])
                fits = count <= len(available)
        before = self.state
        self.state, _effects, results = prepare(state, claim)
        outcome = results[uid]
        if uid in self.got:
            # Idempotent: a retry with the same allocation gets the same CPUs; another one fails.
            if isinstance(outcome, ClaimPrepared):
                assert outcome.claim.cpus == self.got[uid]
                # Only an adopted claim changes: it learns its name and device.
                assert self.state == before or before.claims[uid].adopted
            else:
                assert self.state == before
            return
        assert isinstance(outcome, ClaimPrepared) is fits, (outcome, fits)
        event(f"prepare {'ok' if fits else 'refused'}")
        if fits:
            assert isinstance(outcome, ClaimPrepared)
            self.got[uid] = outcome.claim.cpus
            # Retrying at once changes nothing.
            again, _, results = prepare(self.state, claim)
            assert again == self.state
            retried = results[uid]
            assert isinstance(retried, ClaimPrepared)
            assert retried.claim.cpus == outcome.claim.cpus
        else:
            assert self.state == before

    @rule(uid=st.sampled_from(UIDS))
    def unprepare(self, uid: str) -> None:
        event = Unprepare((ClaimRef("default", f"claim-{uid}", uid),))
        self.state, effects = step(self.state, event)
        self.got.pop(uid, None)
        again, _ = step(self.state, event)
        assert again == self.state
        for effect in effects:
            if isinstance(effect, UpdateContainers):
                for update in effect.updates:
                    assert update.cpus == self.state.shared_pool

    # --- runtime ---

    @rule(cid=st.sampled_from(CONTAINERS), pod=st.sampled_from(["p0", "p1"]), data=st.data())
    def create(self, cid: str, pod: str, data: st.DataObject) -> None:
        if cid in self.state.containers:
            return
        # Mostly claims prepared here (the normal case), sometimes any UID.
        known = sorted(self.got) if self.got and data.draw(st.integers(0, 3)) else UIDS
        claims = data.draw(st.lists(st.sampled_from(known), max_size=2, unique=True))
        forge = data.draw(st.integers(0, 4)) == 0
        env = []
        for uid in claims:
            cpus = self.got.get(uid, CpuSet.of([1]))
            if forge:
                cpus = (cpus ^ CpuSet.of([2])) or CpuSet.of([3])
            env.append(env_entry(uid, cpus))
        info = ContainerInfo(
            PodInfo(pod, "default", pod), cid, data.draw(st.sampled_from(["a", "b"])), tuple(env)
        )
        # The pool stamp is a shortcut only: without it the same state and answer come out.
        unstamped = step(dataclasses.replace(self.state, pool_stamp=None), ContainerCreated(info))
        self.state, effects = step(self.state, ContainerCreated(info))
        assert (self.state, effects) == unstamped
        assert self.state.containers == unstamped[0].containers
        (reply,) = effects
        if isinstance(reply, AdjustContainer):
            event("create exclusive" if claims else "create shared")
            assert reply.container_id == cid
            assert not forge or not claims
            assert all(uid in self.got for uid in claims)
        else:
            assert isinstance(reply, RejectContainer)
            event("create rejected")
            assert reply.reason

    @rule(cid=st.sampled_from(CONTAINERS))
    def cri_update(self, cid: str) -> None:
        known = self.state.containers.get(cid)
        if known is None:
            return
        after, effects = step(self.state, ContainerUpdating(known.info))
        assert effects == (ReplyUpdate((ContainerUpdate(cid, known.cpus),)),)
        assert after == self.state

    @rule(cid=st.sampled_from(CONTAINERS))
    def remove(self, cid: str) -> None:
        self.state, effects = step(self.state, ContainerRemoved(cid))
        assert cid not in self.state.containers
        assert effects == ()

    @rule()
    def synchronize(self) -> None:
        running = tuple(
            ContainerInfo(k.info.pod, k.info.id, k.info.name, k.info.env, k.info.kind, k.cpus)
            for k in self.state.containers.values()
        )
        before = self.state
        self.state, effects = step(self.state, RuntimeSynchronized(running))
        reply = effects[-1]
        assert isinstance(reply, ReplySynchronize)
        assert set(self.state.containers) == set(before.containers)
        # Claims named by a running container's env but unknown here are adopted when their
        # CPUs are free (migration from upstream, or a claim unprepared under a running one).
        for uid in set(self.state.claims) - set(before.claims):
            claim = self.state.claims[uid]
            assert claim.adopted
            assert claim.cpus <= before.free
            self.got[uid] = claim.cpus
        assert set(before.claims) <= set(self.state.claims)

    @rule(index=st.integers(0, len(TOPOLOGIES) - 1))
    def topology_changes(self, index: int) -> None:
        self.state, _ = step(self.state, TopologyChanged(TOPOLOGIES[index]))
        assert self.state.devices == {
            name: cpus
            for name, cpus in self.state.devices.items()
            if cpus <= self.state.topology.online
        }

    # --- invariants ---

    @invariant()
    def claims_are_disjoint_and_none_lost(self) -> None:
        union = CpuSet()
        for uid, claim in self.state.claims.items():
            assert claim.cpus.isdisjoint(union), uid
            union = union | claim.cpus
            assert claim.cpus == self.got[uid]
            assert claim.cpus.isdisjoint(RESERVED)
            per_device = CpuSet()
            for device in claim.devices:
                per_device = per_device | device.cpus
            assert claim.adopted or per_device == claim.cpus
        assert union == self.state.held
        assert set(self.state.claims) == set(self.got)

    @invariant()
    def containers_stay_in_their_allowed_sets(self) -> None:
        exclusive = CpuSet()
        for known in self.state.containers.values():
            if known.claims:
                expected = CpuSet()
                for uid in known.claims:
                    expected = expected | self.state.claims[uid].cpus
                assert known.cpus == expected
                exclusive = exclusive | known.cpus
        for known in self.state.containers.values():
            if not known.claims:
                assert known.cpus.isdisjoint(exclusive)
                assert known.cpus <= self.state.topology.online
                assert known.cpus
        owners = [self.state.owners[u] for k in self.state.containers.values() for u in k.claims]
        assert len({(o.pod_uid, o.container) for o in owners}) <= len(
            {k.info.id for k in self.state.containers.values() if k.claims}
        )


NodeMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
)
TestNodeMachine = NodeMachine.TestCase
