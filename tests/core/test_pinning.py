"""The pinning policy through the node state machine: exclusive, shared, rejections, sync."""

from __future__ import annotations

import pytest

from dracpu.core.cdi import env_entry
from dracpu.core.claims import ClaimRef
from dracpu.core.cpuset import CpuSet
from dracpu.core.node import (
    AdjustContainer,
    ClaimPrepared,
    ContainerCreated,
    ContainerRemoved,
    ContainerUpdating,
    DeviceCpus,
    NodeConfig,
    NodeState,
    RejectContainer,
    ReplySynchronize,
    ReplyUpdate,
    RuntimeSynchronized,
    TopologyChanged,
    Unprepare,
    UpdateContainers,
    WriteCdiSpec,
    WriteCheckpoint,
    step,
)
from dracpu.core.pinning import (
    ContainerInfo,
    ContainerKind,
    ContainerUpdate,
    PodInfo,
    Shared,
    decide,
)
from dracpu.core.slices import GroupBy
from tests.support.claims import POOL, cpuset_config, grouped, parsed, prepare
from tests.support.topologies import make_topology

RESERVED = CpuSet.of([0])
POD_A = PodInfo("pod-a", "default", "a")
POD_B = PodInfo("pod-b", "default", "b")


def machine(**kw: object) -> NodeState:
    """8 CPUs (4 cores x 2), one machine device, CPU 0 reserved."""
    topology = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=4, threads=2)
    config = NodeConfig(pool=POOL, group_by=GroupBy.MACHINE, reserved=RESERVED, **kw)  # type: ignore[arg-type]
    return NodeState.initial(topology, config)


def with_claim(state: NodeState, uid: str, cpuset: str) -> NodeState:
    count = len(CpuSet.parse(cpuset))
    state, _, _ = prepare(
        state, parsed(uid, [grouped("cpudevmachine", count)], [cpuset_config(cpuset)])
    )
    assert uid in state.claims
    return state


def ctr(
    cid: str,
    *claims: tuple[str, str],
    pod: PodInfo = POD_A,
    name: str = "",
    kind: ContainerKind = ContainerKind.CONTAINER,
    cpus: CpuSet | None = None,
) -> ContainerInfo:
    env = ("PATH=/bin", *(env_entry(uid, CpuSet.parse(c)) for uid, c in claims))
    return ContainerInfo(pod, cid, name or cid, env, kind, cpus)


def create(
    state: NodeState, container: ContainerInfo
) -> tuple[NodeState, AdjustContainer | RejectContainer]:
    after, effects = step(state, ContainerCreated(container))
    assert len(effects) == 1
    reply = effects[0]
    assert isinstance(reply, AdjustContainer | RejectContainer)
    return after, reply


def adjusted(reply: object) -> AdjustContainer:
    assert isinstance(reply, AdjustContainer), reply
    return reply


def rejected(reply: object) -> str:
    assert isinstance(reply, RejectContainer), reply
    return reply.reason


def test_shared_gets_pool_including_reserved() -> None:
    state = with_claim(machine(), "c1", "2-3")
    state, reply = create(state, ctr("s1"))
    assert adjusted(reply).cpus == CpuSet.parse("0-1,4-7")  # reserved CPU 0 is in the pool
    assert decide(state, ctr("s2")) == Shared(CpuSet.parse("0-1,4-7"))


def test_exclusive_gets_exactly_its_claims_and_shrinks_shared() -> None:
    state = machine()
    state, reply = create(state, ctr("s1"))
    assert adjusted(reply).cpus == CpuSet.parse("0-7")
    state = with_claim(state, "c1", "2-3")
    state = with_claim(state, "c2", "6")
    state, reply = create(state, ctr("x1", ("c1", "2-3"), ("c2", "6")))
    adjust = adjusted(reply)
    assert adjust.cpus == CpuSet.parse("2-3,6")
    assert adjust.updates == (ContainerUpdate("s1", CpuSet.parse("0-1,4-5,7")),)
    assert state.containers["s1"].cpus == CpuSet.parse("0-1,4-5,7")
    assert state.containers["x1"].exclusive


def test_unprepare_widens_shared_outside_the_handler() -> None:
    state = with_claim(machine(), "c1", "2-3")
    state, _ = create(state, ctr("s1"))
    state, _ = create(state, ctr("x1", ("c1", "2-3")))
    state, _ = step(state, ContainerRemoved("x1"))
    assert state.containers["s1"].cpus == CpuSet.parse("0-1,4-7")  # claim still held
    state, effects = step(state, Unprepare((ClaimRef("default", "claim-c1", "c1"),)))
    assert UpdateContainers((ContainerUpdate("s1", CpuSet.parse("0-7")),)) in effects
    assert isinstance(effects[0], WriteCheckpoint)
    assert state.containers["s1"].cpus == CpuSet.parse("0-7")


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        (("DRA_CPUSET_c1",), "malformed env entry 'DRA_CPUSET_c1'"),
        (("DRA_CPUSET_c1=2-x",), "malformed env entry DRA_CPUSET_c1"),
        (("DRA_CPUSET_nope=2-3",), "env DRA_CPUSET_nope names claim nope, which is not prepared"),
        (("DRA_CPUSET_c1=2-4",), "env DRA_CPUSET_c1=2-4 disagrees with the CPUs prepared"),
    ],
)
def test_env_rejections(env: tuple[str, ...], reason: str) -> None:
    state = with_claim(machine(), "c1", "2-3")
    after, reply = create(state, ContainerInfo(POD_A, "x1", "app", env))
    message = rejected(reply)
    assert reason in message
    assert "container 'app' (x1) of pod default/a" in message
    assert after == state


def test_one_claim_one_container() -> None:
    state = with_claim(machine(), "c1", "2-3")
    state, _ = create(state, ctr("x1", ("c1", "2-3"), name="app"))
    for other in (
        ctr("x2", ("c1", "2-3"), name="other"),
        ctr("x3", ("c1", "2-3"), pod=POD_B, name="app"),
    ):
        _, reply = create(state, other)
        assert "is already used by container 'app' of pod uid pod-a" in rejected(reply)
    # A restart of the same container (same pod and name, new ID) gets the claim again.
    state, _ = step(state, ContainerRemoved("x1"))
    _, reply = create(state, ctr("x1-restarted", ("c1", "2-3"), name="app"))
    assert adjusted(reply).cpus == CpuSet.parse("2-3")


@pytest.mark.parametrize(
    ("kind", "passes"),
    [(ContainerKind.INIT, True), (ContainerKind.CONTAINER, True), (ContainerKind.SIDECAR, False)],
)
def test_init_container_claim_passes_on_sidecar_keeps_it(kind: ContainerKind, passes: bool) -> None:
    state = with_claim(machine(), "c1", "2-3")
    state, _ = create(state, ctr("i1", ("c1", "2-3"), name="init", kind=kind))
    _, reply = create(state, ctr("a1", ("c1", "2-3"), name="app"))
    assert isinstance(reply, RejectContainer)  # the owner still runs
    state, _ = step(state, ContainerRemoved("i1"))
    state, reply = create(state, ctr("a1", ("c1", "2-3"), name="app"))
    assert isinstance(reply, AdjustContainer) is passes
    if passes:  # the first consumer, restarted while the new one runs, is refused
        _, reply = create(state, ctr("i2", ("c1", "2-3"), name="init", kind=kind))
        assert "is already used by container 'app'" in rejected(reply)
    # Never across pods.
    _, reply = create(state, ctr("b1", ("c1", "2-3"), pod=POD_B, name="app"))
    assert isinstance(reply, RejectContainer)


def test_empty_pool_rejects_new_shared_containers() -> None:
    topology = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=2, threads=1)
    state = NodeState.initial(topology, NodeConfig(pool=POOL, group_by=GroupBy.MACHINE))
    state = with_claim(state, "c1", "0-1")
    _, reply = create(state, ctr("s1", pod=POD_B))
    assert "the shared CPU pool is empty" in rejected(reply)
    assert "container 's1' (s1) of pod default/b" in rejected(reply)


def test_synchronize_repins_drift_adopts_and_reasserts_pool() -> None:
    state = with_claim(machine(), "c1", "2-3")
    containers = (
        ctr("x1", ("c1", "2-3"), name="app", cpus=CpuSet.parse("0-7")),  # drifted
        ctr("u1", ("upstream", "6-7"), pod=POD_B, name="app", cpus=CpuSet.parse("6-7")),
        ctr("s1", cpus=CpuSet.parse("0-7")),
        ctr("f1", ("forged", "2-3"), name="forged", cpus=CpuSet.parse("2-3")),  # held: not adopted
    )
    after, effects = step(state, RuntimeSynchronized(containers))
    assert isinstance(effects[0], WriteCheckpoint)
    assert (
        WriteCdiSpec("upstream", CpuSet.parse("6-7"), env_entry("upstream", CpuSet.parse("6-7")))
        in effects
    )
    assert after.claims["upstream"].adopted
    reply = effects[-1]
    assert isinstance(reply, ReplySynchronize)
    pool = CpuSet.parse("0-1,4-5")
    assert set(reply.updates) == {
        ContainerUpdate("x1", CpuSet.parse("2-3")),
        ContainerUpdate("s1", pool),
        ContainerUpdate("f1", pool),
    }
    assert after.containers["f1"].claims == ()
    assert after.owners["c1"].container == "app"
    # A second synchronize with everything in place changes nothing.
    again = tuple(
        ContainerInfo(c.pod, c.id, c.name, c.env, c.kind, after.containers[c.id].cpus)
        for c in containers
    )
    after2, effects = step(after, RuntimeSynchronized(again))
    assert effects == (ReplySynchronize(()),)
    assert after2.claims == after.claims


def test_synchronize_by_another_enforcer_keeps_the_pin_of_the_same_consumer() -> None:
    """NRI names a consumer by container name, the cgroup fallback by the claims its env names:
    at a handover either way, the same running container keeps its claim; a container of
    another pod naming the claim still goes to the pool."""
    state = with_claim(machine(), "c1", "2-3")
    pool = CpuSet.parse("0-1,4-7")
    fallback_name = "claims:DRA_CPUSET_c1"
    state, _ = step(
        state,
        RuntimeSynchronized((ctr("x1", ("c1", "2-3"), name=fallback_name, cpus=pool),)),
    )
    assert state.owners["c1"].container == fallback_name
    for name in ("app", fallback_name, "app"):  # fallback -> NRI -> fallback -> NRI
        running = (
            ctr("x1", ("c1", "2-3"), name=name, cpus=CpuSet.parse("0-7")),
            ctr("o1", ("c1", "2-3"), pod=POD_B, name=name, cpus=pool),
        )
        state, effects = step(state, RuntimeSynchronized(running))
        reply = effects[-1]
        assert isinstance(reply, ReplySynchronize)
        assert ContainerUpdate("x1", CpuSet.parse("2-3")) in reply.updates
        assert state.containers["x1"].claims == ("c1",)
        assert state.containers["o1"].claims == ()
        assert state.owners["c1"].container == name
        assert state.owners["c1"].pod_uid == POD_A.uid


def test_adopted_claim_gets_its_name_at_the_kubelets_retry() -> None:
    state = machine()
    running = (ctr("u1", ("up", "4-5"), cpus=CpuSet.parse("4-5")),)
    state, _ = step(state, RuntimeSynchronized(running))
    assert state.claims["up"].ref == ClaimRef("", "", "up")
    # The kubelet prepares it again after the restart: same CPUs, now with its name.
    state, effects, results = prepare(
        state, parsed("up", [grouped("cpudevmachine", 2)], [cpuset_config("4-5")])
    )
    assert isinstance(effects[0], WriteCheckpoint)
    assert state.claims["up"].ref == ClaimRef("default", "claim-up", "up")
    assert state.claims["up"].cpus == CpuSet.parse("4-5")
    outcome = results["up"]
    assert isinstance(outcome, ClaimPrepared)
    assert outcome.claim.devices == (DeviceCpus("req", POOL, "cpudevmachine", CpuSet.parse("4-5")),)
    assert not outcome.claim.adopted


def test_topology_change_moves_shared_containers_off_offline_cpus() -> None:
    state, _ = create(machine(), ctr("s1"))
    smaller = make_topology(sockets=1, numa_per_socket=1, cores_per_numa=4, threads=2, offline=[7])
    state, effects = step(state, TopologyChanged(smaller))
    assert UpdateContainers((ContainerUpdate("s1", CpuSet.parse("0-6")),)) in effects
    assert state.containers["s1"].cpus == CpuSet.parse("0-6")


def test_cri_updates_are_overridden_with_the_assignment() -> None:
    state = with_claim(machine(), "c1", "2-3")
    state, _ = create(state, ctr("x1", ("c1", "2-3")))
    after, effects = step(state, ContainerUpdating(ctr("x1", ("c1", "2-3"))))
    assert effects == (ReplyUpdate((ContainerUpdate("x1", CpuSet.parse("2-3")),)),)
    assert after == state
    # A container never seen (created while dracpu was away) is placed like a creation.
    after, effects = step(state, ContainerUpdating(ctr("s9", pod=POD_B)))
    assert effects == (ReplyUpdate((ContainerUpdate("s9", CpuSet.parse("0-1,4-7")),)),)
    assert after.containers["s9"].cpus == CpuSet.parse("0-1,4-7")
    # A forged one is left alone.
    after, effects = step(state, ContainerUpdating(ctr("f9", ("nope", "2"))))
    assert effects == (ReplyUpdate(()),)
    assert after == state
