"""The pinning policy: which CPUs a container may run on, answered from the node state (pure).

The NRI plugin and the cgroup fallback translate what they see into :class:`ContainerInfo` and
ask :func:`decide`; :mod:`dracpu.core.node` applies the answer to the state.

- **Exclusive.** A container whose env carries ``DRA_CPUSET_<uid>=<cpus>`` (see
  :mod:`dracpu.core.cdi`) for claims prepared on this node gets exactly those claims' CPUs (the
  union for several). The env must agree with the prepared CPUs, and a claim has one consumer:
  the first container (pod UID, container name) that uses it. A restarted container (same pod
  and name, new ID) is the same consumer. As the kubelet CPU Manager reuses an init container's
  CPUs for the pod's later containers, a claim whose consumer was a plain init container that is
  gone may be taken over by another container of the same pod; a sidecar (restartable init
  container) keeps its claim for the pod's lifetime.
- **Shared.** Every other container (claim-less containers of pods with claims included) gets
  the shared pool: online CPUs minus every CPU of a prepared claim. Reserved CPUs are in the
  pool, as in the kubelet static policy, where ``reservedSystemCPUs`` stay in the shared pool and
  are only excluded from exclusive assignment. A new shared container is refused when the pool
  is empty (upstream #297) rather than given an empty cpuset.
- **Rejections** carry a message naming the variable, claim or container.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dracpu.core.cdi import CpusetEnvError, env_name, parse_env
from dracpu.core.cpuset import CpuSet

if TYPE_CHECKING:
    from dracpu.core.node import NodeState

__all__ = [
    "ContainerInfo",
    "ContainerKind",
    "ContainerUpdate",
    "Decision",
    "Exclusive",
    "Owner",
    "PodInfo",
    "Rejected",
    "Shared",
    "decide",
    "shared_pool",
    "shared_updates",
]


class ContainerKind(enum.StrEnum):
    """What the kubelet CPU Manager distinguishes."""

    CONTAINER = "container"
    """A regular (app) container; also the default when the source cannot tell."""
    INIT = "init"
    """An init container that runs to completion before the app containers."""
    SIDECAR = "sidecar"
    """A restartable init container (``restartPolicy: Always``): lives as long as the pod."""


@dataclass(frozen=True, slots=True)
class PodInfo:
    """The pod a container belongs to."""

    uid: str
    namespace: str = ""
    name: str = ""

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.name else f"uid {self.uid}"


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A container as the runtime reports it, in plain types.

    ``env`` is ``NAME=value`` entries. ``cpus`` is the cpuset the runtime reports the container
    running on now, when known (Synchronize), and ``None`` for a container being created.
    """

    pod: PodInfo
    id: str
    name: str
    env: tuple[str, ...] = ()
    kind: ContainerKind = ContainerKind.CONTAINER
    cpus: CpuSet | None = None

    def __str__(self) -> str:
        return f"container {self.name!r} ({self.id}) of pod {self.pod}"


@dataclass(frozen=True, slots=True)
class Owner:
    """The one consumer of a claim: a container of a pod, by name (survives restarts)."""

    pod_uid: str
    container: str
    kind: ContainerKind = ContainerKind.CONTAINER


@dataclass(frozen=True, slots=True)
class ContainerUpdate:
    """Set a running container's cpuset; ``mems`` / ``hugepage_limits`` too when not empty
    (see :class:`dracpu.core.memory_pinning.ContainerMemory`)."""

    container_id: str
    cpus: CpuSet
    mems: str = ""
    hugepage_limits: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Exclusive:
    """Pin to exactly these claims' CPUs."""

    claims: tuple[str, ...]
    cpus: CpuSet


@dataclass(frozen=True, slots=True)
class Shared:
    """Run on the shared pool."""

    cpus: CpuSet


@dataclass(frozen=True, slots=True)
class Rejected:
    """Refuse the container; ``reason`` is shown in the container's creation error."""

    reason: str


Decision = Exclusive | Shared | Rejected


def shared_pool(state: NodeState) -> CpuSet:
    """Online CPUs minus those of every prepared claim (reserved CPUs included, as kubelet)."""
    return state.topology.online - state.held


def decide(state: NodeState, container: ContainerInfo) -> Decision:
    """The policy's answer for ``container`` in ``state``; never raises on bad input."""
    try:
        wanted = parse_env(container.env, origin=str(container))
    except CpusetEnvError as exc:
        return Rejected(str(exc))
    if not wanted:
        pool = shared_pool(state)
        if not pool:
            return Rejected(
                f"{container}: the shared CPU pool is empty (every CPU is held by a claim); "
                "refusing to start it with no CPUs"
            )
        return Shared(pool)
    cpus = CpuSet()
    for uid in sorted(wanted):
        claim = state.claims.get(uid)
        if claim is None:
            return Rejected(
                f"{container}: env {env_name(uid)} names claim {uid}, which is not prepared "
                "on this node"
            )
        if wanted[uid] != claim.cpus:
            return Rejected(
                f"{container}: env {env_name(uid)}={wanted[uid]} disagrees with the CPUs "
                f"prepared for claim {claim.ref} ({claim.cpus})"
            )
        owner = state.owners.get(uid)
        if owner is not None and not _may_use(state, owner, container):
            return Rejected(
                f"{container}: claim {claim.ref} is already used by container "
                f"{owner.container!r} of pod uid {owner.pod_uid}; a claim has one consumer"
            )
        cpus = cpus | claim.cpus
    return Exclusive(tuple(sorted(wanted)), cpus)


def _may_use(state: NodeState, owner: Owner, container: ContainerInfo) -> bool:
    if owner.pod_uid == container.pod.uid and owner.container == container.name:
        return True
    if owner.kind is ContainerKind.SIDECAR or owner.pod_uid != container.pod.uid:
        return False
    # A stopped consumer's claim passes to the pod's next container naming it, as the kubelet
    # reuses a finished init container's CPUs. NRI does not say which container is an init
    # container (kubelets up to v1.37 annotate no type), so this holds for every kind the
    # runtime cannot tell from a regular one; only a known sidecar, which restarts, keeps it.
    return not any(
        c.info.pod.uid == owner.pod_uid and c.info.name == owner.container
        for c in state.containers.values()
    )


def shared_updates(state: NodeState, *, exclude: str = "") -> tuple[ContainerUpdate, ...]:
    """Updates moving every known shared container whose cpuset differs onto the pool."""
    pool = shared_pool(state)
    if not pool:
        return ()
    return tuple(
        ContainerUpdate(cid, pool)
        for cid, known in sorted(state.containers.items())
        if not known.claims and cid != exclude and known.cpus != pool
    )
