"""The node state machine: ``step(state, event) -> (state, effects)`` over frozen data (pure).

One owner in the shell holds the current :class:`NodeState`, feeds it every event (kubelet
prepare / unprepare, runtime container events, topology changes) one at a time, stores the new
state and runs the returned effects **in order**. Effects are ordered so that the write-ahead
checkpoint comes first, then CDI files, then container updates, then the reply. Every effect is
replay-safe (writing the same checkpoint, CDI spec or cpuset twice is harmless), so a shell that
is cancelled half-way may simply run the effects again.

Preparation, per device mode:

- **grouped** (numanode / socket / machine): each allocation result's consumed ``dra.cpu/cpu``
  goes to :func:`dracpu.core.allocator.allocate` over the device's CPUs minus the CPUs other
  claims hold, the reserved CPUs and what earlier results of the same claim took; several
  results give the union. A ``cpuConfig.cpuset`` in the request's opaque config is used as
  given instead, after upstream's validation: size equal to the consumed capacity, every CPU
  online, inside the device, not reserved, not held by another claim or an earlier result.
  ``cpuConfig`` allocator options override the daemon's defaults.
- **individual**: each result's device (``cpudevNNN``) maps to its CPU through the published
  device list. The mapping is stored with the claim, so it does not move while the claim is
  held, whatever happens to the published list afterwards.

Prepare is idempotent: a claim UID already prepared gets the same CPUs (when its allocation
results are the same). Unprepare of an unknown UID succeeds. Every failure is per claim, with a
message naming the claim and the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import immutables

from dracpu.core.allocator import AllocationOptions, allocate
from dracpu.core.cdi import ENV_PREFIX, CpusetEnvError, cdi_device_id, env_entry, parse_env
from dracpu.core.claims import Claim, ClaimRef, DeviceResult
from dracpu.core.cpuset import CpuSet
from dracpu.core.memory_pinning import ContainerMemory, MemoryRejected, memory_of
from dracpu.core.memory_prepare import (
    AllocatedMemory,
    MemoryAssignment,
    MemoryClaimError,
    assignment_from_json,
    assignment_to_json,
    memory_env,
    prepare_memory,
)
from dracpu.core.memory_prepare import (
    cdi_device_id as memory_cdi_device_id,
)
from dracpu.core.memory_slices import MemoryDevice
from dracpu.core.names import DRIVER_NAME as DRIVER
from dracpu.core.pinning import (
    ContainerInfo,
    ContainerKind,
    ContainerUpdate,
    Exclusive,
    Owner,
    PodInfo,
    Rejected,
    Shared,
    decide,
    shared_pool,
    shared_updates,
)
from dracpu.core.slices import DeviceMode, GroupBy, SliceOptions, cpu_devices
from dracpu.core.topology import Topology
from dracpu.errors import AllocationError, CpuSetParseError, InvalidValueError

__all__ = [
    "AdjustContainer",
    "ClaimFailed",
    "ClaimPrepared",
    "ClaimUnprepared",
    "ContainerCreated",
    "ContainerInfo",
    "ContainerKind",
    "ContainerRemoved",
    "ContainerUpdating",
    "DeviceCpus",
    "Effect",
    "Event",
    "KnownContainer",
    "MemoryPrepared",
    "NodeConfig",
    "NodeState",
    "PodInfo",
    "Prepare",
    "PrepareMemory",
    "PrepareOutcome",
    "PreparedClaim",
    "RejectContainer",
    "RemoveCdiSpec",
    "RemoveMemoryCdiSpec",
    "ReplyPrepare",
    "ReplyPrepareMemory",
    "ReplySynchronize",
    "ReplyUnprepare",
    "ReplyUpdate",
    "ReportOfflineClaims",
    "RepublishSlices",
    "RuntimeSynchronized",
    "TopologyChanged",
    "Unprepare",
    "UnprepareMemory",
    "UnprepareOutcome",
    "UpdateContainers",
    "WriteCdiSpec",
    "WriteCheckpoint",
    "WriteClaimStatus",
    "WriteMemoryCdiSpec",
    "claim_status_devices",
    "restore",
    "snapshot",
    "snapshot_claim",
    "snapshot_rest",
    "step",
    "unaccounted_held",
]


# --- state -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The daemon's fixed settings: pool (= node name), device mode, reserved CPUs, defaults."""

    pool: str
    mode: DeviceMode = DeviceMode.GROUPED
    group_by: GroupBy = GroupBy.NUMANODE
    reserved: CpuSet = CpuSet()  # noqa: RUF009 (immutable value)
    defaults: AllocationOptions = AllocationOptions()  # noqa: RUF009 (immutable value)
    driver: str = DRIVER
    memory_devices: tuple[MemoryDevice, ...] = ()
    """The ``dra.memory`` devices published in ``pool`` (empty: the memory driver is off)."""
    bind_memory_to_cpus: bool = False
    """Give containers with exclusive CPUs and no memory claim their CPUs' NUMA nodes as mems."""

    def slice_options(self, *, expose_pcie_roots: bool = False) -> SliceOptions:
        """The slice model's options for the same node."""
        return SliceOptions(
            node_name=self.pool,
            reserved=self.reserved,
            mode=self.mode,
            group_by=self.group_by,
            expose_pcie_roots=expose_pcie_roots,
        )


@dataclass(frozen=True, slots=True)
class DeviceCpus:
    """The CPUs one allocation result of a claim got."""

    request: str
    pool: str
    device: str
    cpus: CpuSet
    share_id: str | None = None


@dataclass(frozen=True, slots=True)
class PreparedClaim:
    """A claim prepared on this node: its CPUs and, per allocation result, which ones.

    ``adopted`` claims were taken over from a running container's env at Synchronize (a node
    that ran the upstream driver, or a lost checkpoint); their ``devices`` are unknown (empty).
    """

    ref: ClaimRef
    cpus: CpuSet
    devices: tuple[DeviceCpus, ...] = ()
    adopted: bool = False


@dataclass(frozen=True, slots=True)
class KnownContainer:
    """A container the policy placed: its claims (empty = shared) and assigned cpuset."""

    info: ContainerInfo
    claims: tuple[str, ...]
    cpus: CpuSet
    memory: ContainerMemory = ContainerMemory()  # noqa: RUF009 (immutable value)

    @property
    def exclusive(self) -> bool:
        """True when the container is pinned to claims' CPUs."""
        return bool(self.claims)


@dataclass(frozen=True, slots=True)
class NodeState:
    """Everything the node agent decides from. Never mutated; ``step`` returns a new one.

    ``devices`` maps each published device name to its CPUs (from topology, mode and reserved
    CPUs); ``held`` is the union of every prepared claim's CPUs; ``owners`` maps a claim UID to
    its one consumer. Containers are not checkpointed: the runtime's Synchronize rebuilds them.
    ``containers`` is always a persistent map (``immutables.Map``; any other mapping given is
    converted), so a container event costs O(log n), not a copy of every known container.
    """

    topology: Topology
    config: NodeConfig
    devices: Mapping[str, CpuSet]
    claims: Mapping[str, PreparedClaim] = field(default_factory=dict)
    containers: Mapping[str, KnownContainer] = field(default_factory=immutables.Map)
    owners: Mapping[str, Owner] = field(default_factory=dict)
    held: CpuSet = CpuSet()  # noqa: RUF009 (immutable value)
    memory: Mapping[str, MemoryAssignment] = field(default_factory=dict)
    """Prepared ``dra.memory`` claims by UID (checkpointed with the CPU claims)."""
    # (containers, pool) when every shared container in exactly that ``containers`` mapping is
    # known to run on that pool, so an exclusive creation need not scan them all. Bound to the
    # mapping's identity: every transition that changes containers builds a new mapping, which
    # drops the stamp unless the transition renews it. Not part of the state's value.
    pool_stamp: tuple[Mapping[str, KnownContainer], CpuSet] | None = field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.containers, immutables.Map):
            object.__setattr__(self, "containers", immutables.Map(self.containers))

    def shared_on_pool(self, pool: CpuSet) -> bool:
        """True when every shared container is known to run on ``pool`` already."""
        stamp = self.pool_stamp
        return stamp is not None and stamp[0] is self.containers and stamp[1] == pool

    @classmethod
    def initial(
        cls,
        topology: Topology,
        config: NodeConfig,
        claims: Iterable[PreparedClaim] = (),
        memory: Iterable[MemoryAssignment] = (),
    ) -> NodeState:
        """A state with no containers, holding ``claims`` and ``memory`` (e.g. a checkpoint).

        Raises :class:`InvalidValueError` when two claims share a CPU.
        """
        by_uid: dict[str, PreparedClaim] = {}
        held = CpuSet()
        for claim in claims:
            overlap = claim.cpus & held
            if overlap:
                raise InvalidValueError(
                    f"claim {claim.ref} holds CPUs {overlap} that another claim holds too",
                    value=str(claim.cpus),
                )
            by_uid[claim.ref.uid] = claim
            held = held | claim.cpus
        return cls(
            topology=topology,
            config=config,
            devices=_devices(topology, config),
            claims=by_uid,
            held=held,
            memory={m.claim_uid: m for m in memory},
        )

    @property
    def allocatable(self) -> CpuSet:
        """Online CPUs that claims may get: online minus reserved."""
        return self.topology.online - self.config.reserved

    @property
    def free(self) -> CpuSet:
        """Allocatable CPUs no claim holds."""
        return self.allocatable - self.held

    @property
    def shared_pool(self) -> CpuSet:
        """Where shared containers run (see :mod:`dracpu.core.pinning`)."""
        return shared_pool(self)

    def holder_of(self, cpus: CpuSet) -> PreparedClaim | None:
        """A prepared claim holding any of ``cpus``, or None."""
        if cpus.isdisjoint(self.held):
            return None
        for claim in self.claims.values():
            if not claim.cpus.isdisjoint(cpus):
                return claim
        return None


def unaccounted_held(state: NodeState) -> CpuSet:
    """Held CPUs that no prepared claim's allocation result names on a published device.

    After a restart with another device mode or grouping, claims prepared before it keep their
    CPUs under device names the slices no longer carry, so the scheduler sees those CPUs as free.
    Adopted claims (devices unknown) count too. The slice model hides these CPUs
    (:attr:`SliceOptions.hidden`) until the claims are unprepared.
    """
    unaccounted = CpuSet()
    for claim in state.claims.values():
        unaccounted = unaccounted | _unaccounted(state, claim)
    return unaccounted


def _unaccounted(state: NodeState, claim: PreparedClaim) -> CpuSet:
    accounted = CpuSet()
    for result in claim.devices:
        if result.pool == state.config.pool and result.device in state.devices:
            accounted = accounted | (result.cpus & state.devices[result.device])
    return claim.cpus - accounted


def _devices(topology: Topology, config: NodeConfig) -> dict[str, CpuSet]:
    return {d.name: d.cpus for d in cpu_devices(topology, config.slice_options())}


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepare:
    """A kubelet NodePrepareResources batch.

    ``claims`` is what the kubelet asked for; ``fetched`` maps each UID to the parsed claim from
    the API (:func:`dracpu.core.claims.parse_claim`) or to the message of why it could not be
    fetched or parsed. A UID missing from ``fetched`` fails with "claim not found".
    """

    claims: tuple[ClaimRef, ...]
    fetched: Mapping[str, Claim | str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unprepare:
    """A kubelet NodeUnprepareResources batch."""

    claims: tuple[ClaimRef, ...]


@dataclass(frozen=True, slots=True)
class ContainerCreated:
    """The runtime is creating a container and waits for our answer (NRI CreateContainer)."""

    container: ContainerInfo


@dataclass(frozen=True, slots=True)
class ContainerRemoved:
    """A container stopped or was removed; unknown IDs are ignored."""

    container_id: str


@dataclass(frozen=True, slots=True)
class ContainerUpdating:
    """The kubelet asks the runtime to change a container's resources (NRI UpdateContainer);
    our reply re-asserts the cpuset the policy assigned, overriding the CRI's.
    """

    container: ContainerInfo


@dataclass(frozen=True, slots=True)
class RuntimeSynchronized:
    """The runtime's full list of containers after (re)connecting (NRI Synchronize)."""

    containers: tuple[ContainerInfo, ...]


@dataclass(frozen=True, slots=True)
class TopologyChanged:
    """CPUs went on- or offline (or the machine was re-read)."""

    topology: Topology


@dataclass(frozen=True, slots=True)
class PrepareMemory:
    """A kubelet NodePrepareResources batch for driver ``dra.memory``.

    ``fetched`` maps each UID to the claim's ``dra.memory`` allocation results in this pool, or
    to the message of why the claim could not be fetched or read.
    """

    claims: tuple[ClaimRef, ...]
    fetched: Mapping[str, tuple[AllocatedMemory, ...] | str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UnprepareMemory:
    """A kubelet NodeUnprepareResources batch for driver ``dra.memory``."""

    claims: tuple[ClaimRef, ...]


Event = (
    Prepare
    | Unprepare
    | PrepareMemory
    | UnprepareMemory
    | ContainerCreated
    | ContainerUpdating
    | ContainerRemoved
    | RuntimeSynchronized
    | TopologyChanged
)


# --- per-claim outcomes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimPrepared:
    """The claim is prepared with these CPUs; ``cdi_device_ids`` go to the kubelet."""

    claim: PreparedClaim
    cdi_device_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClaimUnprepared:
    """The claim is no longer prepared (or never was)."""


@dataclass(frozen=True, slots=True)
class ClaimFailed:
    """The claim could not be (un)prepared; ``error`` names the claim and the reason."""

    error: str


@dataclass(frozen=True, slots=True)
class MemoryPrepared:
    """The ``dra.memory`` claim is prepared; ``cdi_device_ids`` go to the kubelet."""

    assignment: MemoryAssignment
    cdi_device_ids: tuple[str, ...] = ()


PrepareOutcome = ClaimPrepared | ClaimFailed
MemoryPrepareOutcome = MemoryPrepared | ClaimFailed
UnprepareOutcome = ClaimUnprepared | ClaimFailed


# --- effects -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteCheckpoint:
    """Durably persist ``snapshot(state)`` before any later effect and before the reply."""

    state: NodeState


@dataclass(frozen=True, slots=True)
class WriteCdiSpec:
    """Write (atomically, overwriting) the CDI spec of a claim: ``cdi_spec(claim_uid, cpus)``.

    ``env`` is the spec's one env entry, for logs.
    """

    claim_uid: str
    cpus: CpuSet
    env: str


@dataclass(frozen=True, slots=True)
class RemoveCdiSpec:
    """Remove a claim's CDI spec; a missing file is fine."""

    claim_uid: str


@dataclass(frozen=True, slots=True)
class WriteMemoryCdiSpec:
    """Write (atomically, overwriting) the ``dra.k8s.io/memory`` CDI spec of a claim: one
    device ``claim-<uid>`` whose env is ``env`` (:func:`memory_env`)."""

    claim_uid: str
    env: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RemoveMemoryCdiSpec:
    """Remove a claim's ``dra.k8s.io/memory`` CDI spec; a missing file is fine."""

    claim_uid: str


@dataclass(frozen=True, slots=True)
class WriteClaimStatus:
    """Publish the claim's CPUs in ``status.devices[]`` (best effort; may run after the reply).

    ``devices`` is :func:`claim_status_devices` of the claim.
    """

    claim: ClaimRef
    devices: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class UpdateContainers:
    """Set other containers' cpusets, outside any runtime request (NRI UpdateContainers)."""

    updates: tuple[ContainerUpdate, ...]


@dataclass(frozen=True, slots=True)
class RepublishSlices:
    """The published devices changed: publish slices for the state's topology again."""

    reason: str


@dataclass(frozen=True, slots=True)
class ReportOfflineClaims:
    """Claims hold CPUs that are now offline; they keep them (nothing is moved). Log / health."""

    offline: tuple[tuple[ClaimRef, CpuSet], ...]


@dataclass(frozen=True, slots=True)
class ReplyPrepare:
    """The answer to a Prepare: one outcome per requested claim UID."""

    results: Mapping[str, PrepareOutcome]


@dataclass(frozen=True, slots=True)
class ReplyPrepareMemory:
    """The answer to a PrepareMemory: one outcome per requested claim UID."""

    results: Mapping[str, MemoryPrepareOutcome]


@dataclass(frozen=True, slots=True)
class ReplyUnprepare:
    """The answer to an Unprepare: one outcome per requested claim UID."""

    results: Mapping[str, UnprepareOutcome]


@dataclass(frozen=True, slots=True)
class AdjustContainer:
    """The answer to ContainerCreated: its cpuset, plus updates of other containers that go in
    the same response (shared containers shrinking off a new exclusive container's CPUs).
    """

    container_id: str
    cpus: CpuSet
    updates: tuple[ContainerUpdate, ...] = ()
    memory: ContainerMemory = ContainerMemory()  # noqa: RUF009 (immutable value)


@dataclass(frozen=True, slots=True)
class RejectContainer:
    """The answer to ContainerCreated: fail the creation with ``reason``."""

    container_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReplySynchronize:
    """The answer to RuntimeSynchronized (updates re-asserting every pin and the pool) and to
    ContainerUpdating (the container's own cpuset; empty: leave it alone). Both NRI responses
    are a list of container updates.
    """

    updates: tuple[ContainerUpdate, ...]


ReplyUpdate = ReplySynchronize
"""The answer to ContainerUpdating: the same type as :class:`ReplySynchronize`."""


Effect = (
    WriteCheckpoint
    | WriteCdiSpec
    | RemoveCdiSpec
    | WriteMemoryCdiSpec
    | RemoveMemoryCdiSpec
    | WriteClaimStatus
    | UpdateContainers
    | RepublishSlices
    | ReportOfflineClaims
    | ReplyPrepare
    | ReplyPrepareMemory
    | ReplyUnprepare
    | AdjustContainer
    | RejectContainer
    | ReplySynchronize
)


# --- the transition function -------------------------------------------------------------------


def step(state: NodeState, event: Event) -> tuple[NodeState, tuple[Effect, ...]]:
    """Apply one event; return the new state and the effects to run, in order.

    Pure and total: bad input becomes a per-claim failure or a rejection, never an exception.
    """
    if isinstance(event, Prepare):
        return _prepare(state, event)
    if isinstance(event, Unprepare):
        return _unprepare(state, event)
    if isinstance(event, PrepareMemory):
        return _prepare_memory(state, event)
    if isinstance(event, UnprepareMemory):
        return _unprepare_memory(state, event)
    if isinstance(event, ContainerCreated):
        return _container_created(state, event.container)
    if isinstance(event, ContainerUpdating):
        return _container_updating(state, event.container)
    if isinstance(event, ContainerRemoved):
        return _container_removed(state, event.container_id)
    if isinstance(event, RuntimeSynchronized):
        return _synchronized(state, event.containers)
    return _topology_changed(state, event.topology)


def claim_status_devices(claim: PreparedClaim, driver: str = DRIVER) -> tuple[dict[str, Any], ...]:
    """``status.devices[]`` entries showing each device's CPUs (``data.cpuset``) and the claim's
    (``data.claimCpuset``); keyed by driver, pool, device and shareID as the API requires.
    """
    entries = []
    whole = str(claim.cpus)
    for device in claim.devices:
        entry: dict[str, Any] = {"driver": driver, "pool": device.pool, "device": device.device}
        if device.share_id:
            entry["shareID"] = device.share_id
        mine = whole if device.cpus == claim.cpus else str(device.cpus)
        entry["data"] = {"cpuset": mine, "claimCpuset": whole}
        entries.append(entry)
    return tuple(entries)


def _cdi_ids(uid: str) -> tuple[str, ...]:
    return (cdi_device_id(uid),)


def _same_results(prepared: PreparedClaim, results: tuple[DeviceResult, ...]) -> bool:
    if prepared.adopted:
        return True
    have = sorted((d.request, d.pool, d.device, d.share_id or "") for d in prepared.devices)
    want = sorted((r.request, r.pool, r.device, r.share_id or "") for r in results)
    return have == want


_Fetched = TypeVar("_Fetched")


def _fetched(ref: ClaimRef, fetched: _Fetched | str | None) -> _Fetched | ClaimFailed:
    """What the kubelet's prepare fetched for one claim (the claim, or its memory results), or
    the per-claim failure: not in the API, or the fetch's own error."""
    if fetched is None:
        return ClaimFailed(f"ResourceClaim {ref}: not found")
    if isinstance(fetched, str):
        return ClaimFailed(fetched)
    return fetched


def _prepare(state: NodeState, event: Prepare) -> tuple[NodeState, tuple[Effect, ...]]:
    claims = dict(state.claims)
    held = state.held
    results: dict[str, PrepareOutcome] = {}
    new: list[PreparedClaim] = []
    ready: list[PreparedClaim] = []
    for ref in event.claims:
        fetched = _fetched(ref, event.fetched.get(ref.uid))
        if isinstance(fetched, ClaimFailed):
            results[ref.uid] = fetched
            continue
        if fetched.uid != ref.uid or (fetched.namespace, fetched.name) != (ref.namespace, ref.name):
            results[ref.uid] = ClaimFailed(
                f"ResourceClaim {ref.namespace}/{ref.name}: the API has "
                f"{fetched.namespace}/{fetched.name} with uid {fetched.uid}, not {ref.uid}; "
                "the claim was replaced"
            )
            continue
        existing = claims.get(ref.uid)
        if existing is not None:
            if not _same_results(existing, fetched.results):
                results[ref.uid] = ClaimFailed(
                    f"ResourceClaim {ref}: already prepared with devices "
                    f"{', '.join(d.device for d in existing.devices)} (CPUs {existing.cpus}); "
                    f"the allocation now names "
                    f"{', '.join(r.device for r in fetched.results) or 'none'}"
                )
                continue
            if existing.adopted:
                # The kubelet names a claim adopted from a running container: keep its CPUs,
                # learn its name and, for a single result, which device holds them.
                named = dataclasses.replace(existing, ref=ref)
                if len(fetched.results) == 1:
                    (only,) = fetched.results
                    device = DeviceCpus(
                        only.request, only.pool, only.device, existing.cpus, only.share_id
                    )
                    named = dataclasses.replace(named, devices=(device,), adopted=False)
                if named != existing:
                    existing = named
                    claims[ref.uid] = existing
                    new.append(existing)
            ready.append(existing)
            results[ref.uid] = ClaimPrepared(existing, _cdi_ids(ref.uid) if existing.cpus else ())
            continue
        try:
            prepared = _assign(state, claims, held, fetched)
        except (AllocationError, InvalidValueError) as exc:
            results[ref.uid] = ClaimFailed(str(exc))
            continue
        if not prepared.cpus:
            # No result of our driver: nothing to hold, nothing to inject (as upstream).
            results[ref.uid] = ClaimPrepared(prepared)
            continue
        claims[ref.uid] = prepared
        held = held | prepared.cpus
        new.append(prepared)
        ready.append(prepared)
        results[ref.uid] = ClaimPrepared(prepared, _cdi_ids(ref.uid))
    after = dataclasses.replace(state, claims=claims, held=held) if new else state
    effects: list[Effect] = []
    if new:
        effects.append(WriteCheckpoint(after))
    for claim in ready:
        effects.append(
            WriteCdiSpec(claim.ref.uid, claim.cpus, env_entry(claim.ref.uid, claim.cpus))
        )
    for claim in new:
        if claim.devices:
            effects.append(
                WriteClaimStatus(claim.ref, claim_status_devices(claim, state.config.driver))
            )
    effects.append(ReplyPrepare(results))
    return after, tuple(effects)


def _assign(
    state: NodeState, claims: Mapping[str, PreparedClaim], held: CpuSet, claim: Claim
) -> PreparedClaim:
    """The CPUs of a claim not yet prepared; raises AllocationError / InvalidValueError."""
    label = f"ResourceClaim {claim.ref}"
    taken = CpuSet()
    devices: list[DeviceCpus] = []
    individual = state.config.mode is DeviceMode.INDIVIDUAL
    for result in claim.results:
        where = f"{label} request {result.request!r} device {result.device}"
        device_cpus = state.devices.get(result.device)
        if device_cpus is None:
            raise InvalidValueError(
                f"{where}: stale allocation: no such device is published on this node "
                f"({state.config.mode} mode"
                + ("" if individual else f", {state.config.group_by}")
                + ")",
                value=result.device,
            )
        unavailable = held | taken
        if individual:
            cpus = device_cpus
            if not cpus <= state.topology.online:
                raise InvalidValueError(f"{where}: CPU {cpus} is offline", value=result.device)
            if not cpus.isdisjoint(unavailable):
                raise InvalidValueError(
                    f"{where}: stale allocation: CPU {cpus} is already held by "
                    + _holder_text(claims, cpus, taken),
                    value=result.device,
                )
        else:
            cpus = _grouped(state, claims, result, device_cpus, unavailable, taken, where)
        taken = taken | cpus
        devices.append(
            DeviceCpus(result.request, result.pool, result.device, cpus, result.share_id)
        )
    return PreparedClaim(ref=claim.ref, cpus=taken, devices=tuple(devices))


def _holder_text(claims: Mapping[str, PreparedClaim], cpus: CpuSet, taken: CpuSet) -> str:
    if not cpus.isdisjoint(taken):
        return "an earlier device of the same claim"
    for holder in claims.values():
        if not holder.cpus.isdisjoint(cpus):
            return f"claim {holder.ref}"
    return "another claim"


def _grouped(
    state: NodeState,
    claims: Mapping[str, PreparedClaim],
    result: DeviceResult,
    device_cpus: CpuSet,
    unavailable: CpuSet,
    taken: CpuSet,
    where: str,
) -> CpuSet:
    count = result.cpus
    if count is None:
        raise InvalidValueError(
            f"{where}: consumed capacity dra.cpu/cpu is missing", value=result.device
        )
    wanted = result.config.cpuset
    if wanted is not None:
        if len(wanted) != count:
            raise InvalidValueError(
                f"{where}: opaque cpuset {wanted} has {len(wanted)} CPUs but the consumed "
                f"capacity is {count}",
                value=str(wanted),
            )
        offline = wanted - state.topology.online
        if offline:
            raise InvalidValueError(
                f"{where}: opaque cpuset {wanted} contains offline CPUs {offline}",
                value=str(wanted),
            )
        reserved = wanted & state.config.reserved
        if reserved:
            raise InvalidValueError(
                f"{where}: opaque cpuset {wanted} contains reserved CPUs {reserved}",
                value=str(wanted),
            )
        outside = wanted - device_cpus
        if outside:
            raise InvalidValueError(
                f"{where}: opaque cpuset {wanted} has CPUs {outside} outside the device "
                f"({device_cpus})",
                value=str(wanted),
            )
        clash = wanted & unavailable
        if clash:
            raise InvalidValueError(
                f"{where}: opaque cpuset {wanted} has CPUs {clash} already held by "
                + _holder_text(claims, clash, taken),
                value=str(wanted),
            )
        return wanted
    available = (device_cpus & state.topology.online) - unavailable - state.config.reserved
    options = result.config.options(state.config.defaults)
    try:
        return allocate(state.topology, available, count, options)
    except AllocationError as exc:
        raise AllocationError(f"{where}: {exc}") from exc


def _unprepare(state: NodeState, event: Unprepare) -> tuple[NodeState, tuple[Effect, ...]]:
    claims = dict(state.claims)
    owners = dict(state.owners)
    held = state.held
    results: dict[str, UnprepareOutcome] = {}
    gone: list[str] = []
    reveals = False  # a released claim's CPUs were hidden from the slices
    for ref in event.claims:
        results[ref.uid] = ClaimUnprepared()
        claim = claims.pop(ref.uid, None)
        owners.pop(ref.uid, None)
        gone.append(ref.uid)
        if claim is not None:
            held = held - claim.cpus
            reveals = reveals or bool(_unaccounted(state, claim))
    changed = len(claims) != len(state.claims)
    after = state
    if changed:
        # Containers still pinned to a released claim (the kubelet unprepares after the pod's
        # containers stopped, so normally none) fall back to the shared pool.
        containers = {
            cid: (
                known
                if all(uid in claims for uid in known.claims)
                else dataclasses.replace(known, claims=(), cpus=CpuSet())
            )
            for cid, known in state.containers.items()
        }
        after = dataclasses.replace(
            state, claims=claims, owners=owners, held=held, containers=containers
        )
    effects: list[Effect] = []
    if changed:
        effects.append(WriteCheckpoint(after))
        if reveals:
            effects.append(RepublishSlices("CPUs of a claim from before a device-mode switch"))
    # Removing the spec of a claim we do not know is harmless and clears leftovers.
    effects.extend(RemoveCdiSpec(uid) for uid in gone)
    if changed and (updates := shared_updates(after)):
        effects.append(UpdateContainers(updates))
        after = _record_updates(after, updates)
    effects.append(ReplyUnprepare(results))
    return after, tuple(effects)


def _containers(state: NodeState) -> immutables.Map[str, KnownContainer]:
    """The state's persistent container map (``NodeState`` converts any other mapping)."""
    containers = state.containers
    assert isinstance(containers, immutables.Map)
    return containers


_STATE_FIELDS = (
    "topology",
    "config",
    "devices",
    "claims",
    "containers",
    "owners",
    "held",
    "memory",
    "pool_stamp",
)
assert tuple(f.name for f in dataclasses.fields(NodeState)) == _STATE_FIELDS, (
    "NodeState changed: update _with_containers"
)


def _with_containers(
    state: NodeState,
    containers: immutables.Map[str, KnownContainer],
    owners: Mapping[str, Owner],
    stamp: tuple[Mapping[str, KnownContainer], CpuSet] | None,
) -> NodeState:
    """``dataclasses.replace`` for the container events, at a third of its cost (every field
    is named, and the assertion above fails if NodeState gains one)."""
    return NodeState(
        topology=state.topology,
        config=state.config,
        devices=state.devices,
        claims=state.claims,
        containers=containers,
        owners=owners,
        held=state.held,
        memory=state.memory,
        pool_stamp=stamp,
    )


def _record_updates(state: NodeState, updates: Iterable[ContainerUpdate]) -> NodeState:
    containers = _containers(state).mutate()
    for update in updates:
        known = containers.get(update.container_id)
        if known is not None:
            containers[update.container_id] = dataclasses.replace(known, cpus=update.cpus)
    return dataclasses.replace(state, containers=containers.finish())


def _container_created(
    state: NodeState, container: ContainerInfo
) -> tuple[NodeState, tuple[Effect, ...]]:
    decision = decide(state, container)
    if isinstance(decision, Rejected):
        return state, (RejectContainer(container.id, decision.reason),)
    memory = memory_of(state, container, decision.cpus if isinstance(decision, Exclusive) else None)
    if isinstance(memory, MemoryRejected):
        return state, (RejectContainer(container.id, memory.reason),)
    pool = shared_pool(state)  # a container's creation never changes the pool
    synced = state.shared_on_pool(pool)
    if isinstance(decision, Shared):
        known = KnownContainer(container, (), decision.cpus, memory)
        containers = _containers(state).set(container.id, known)
        stamp = (containers, pool) if synced and decision.cpus == pool else None
        after = _with_containers(state, containers, state.owners, stamp)
        return after, (AdjustContainer(container.id, decision.cpus, memory=memory),)
    assert isinstance(decision, Exclusive)
    owner = Owner(container.pod.uid, container.name, container.kind)
    owners = state.owners
    if any(owners.get(uid) != owner for uid in decision.claims):  # not a consumer restarting
        owners = dict(owners)
        for uid in decision.claims:
            owners[uid] = owner
    known = KnownContainer(container, decision.claims, decision.cpus, memory)
    containers = _containers(state).set(container.id, known)
    if synced:
        # O(changed): with every shared container already on the pool there is nothing to
        # scan, and the stamp carries over to the new map (one copy of the state, not two).
        stamp = (containers, pool) if pool else None
        after = _with_containers(state, containers, owners, stamp)
        return after, (AdjustContainer(container.id, decision.cpus, (), memory),)
    after = _with_containers(state, containers, owners, None)
    updates = shared_updates(after, exclude=container.id)
    after = _record_updates(after, updates) if updates else after
    after = dataclasses.replace(after, pool_stamp=(after.containers, pool) if pool else None)
    return after, (AdjustContainer(container.id, decision.cpus, updates, memory),)


def _own_update(container_id: str, cpus: CpuSet, memory: ContainerMemory) -> ContainerUpdate:
    return ContainerUpdate(container_id, cpus, memory.mems_text, memory.hugepage_limits)


def _container_updating(
    state: NodeState, container: ContainerInfo
) -> tuple[NodeState, tuple[Effect, ...]]:
    known = state.containers.get(container.id)
    if known is not None:
        return state, (ReplyUpdate((_own_update(container.id, known.cpus, known.memory),)),)
    # Not seen before (created while we were away): place it as a creation would, quietly.
    after, effects = _container_created(state, container)
    reply = effects[0]
    if isinstance(reply, AdjustContainer):
        own = _own_update(container.id, reply.cpus, reply.memory)
        return after, (ReplyUpdate((own, *reply.updates)),)
    return state, (ReplyUpdate(()),)


def _container_removed(state: NodeState, container_id: str) -> tuple[NodeState, tuple[Effect, ...]]:
    if container_id not in state.containers:
        return state, ()
    # The claim stays prepared and owned (a restarted container gets it back): the pool only
    # widens at unprepare.
    containers = _containers(state).delete(container_id)
    # Removing a container moves no other: a settled pool stays settled.
    pool = shared_pool(state)
    stamp = (containers, pool) if pool and state.shared_on_pool(pool) else None
    return _with_containers(state, containers, state.owners, stamp), ()


def _synchronized(
    state: NodeState, containers: tuple[ContainerInfo, ...]
) -> tuple[NodeState, tuple[Effect, ...]]:
    claims = dict(state.claims)
    held = state.held
    adopted: list[PreparedClaim] = []
    # Adopt claims that running containers carry but the state lacks, when their CPUs are free.
    for container in containers:
        try:
            wanted = parse_env(container.env)
        except CpusetEnvError:
            continue
        for uid, cpus in sorted(wanted.items()):
            if uid in claims:
                continue
            if cpus <= (state.allocatable - held):
                claim = PreparedClaim(ClaimRef("", "", uid), cpus, (), adopted=True)
                claims[uid] = claim
                held = held | cpus
                adopted.append(claim)
    base = dataclasses.replace(
        state, claims=claims, held=held, containers=immutables.Map(), owners={}
    )
    # Exclusive containers first, so ownership is settled before shared ones are placed.
    ordered = sorted(containers, key=lambda c: (not _has_claim_env(c), c.pod.uid, c.name, c.id))
    # Known owners stay (a stopped container restarts), seen the way this runtime names them.
    owners = {
        uid: _renamed_owner(o, uid, ordered) for uid, o in state.owners.items() if uid in claims
    }
    base = dataclasses.replace(base, owners=owners)
    known: immutables.Map[str, KnownContainer] = immutables.Map()
    updates: list[ContainerUpdate] = []
    current = base
    for container in ordered:
        decision = decide(current, container)
        exclusive = decision.cpus if isinstance(decision, Exclusive) else None
        memory = memory_of(current, container, exclusive)
        if isinstance(memory, MemoryRejected):
            memory = ContainerMemory()  # Forged memory env: leave its memory as it is.
        if isinstance(decision, Exclusive):
            for uid in decision.claims:
                owners[uid] = Owner(container.pod.uid, container.name, container.kind)
            entry = KnownContainer(container, decision.claims, decision.cpus, memory)
        else:
            # Shared, or rejected (forged env, second consumer): it runs on the pool.
            entry = KnownContainer(container, (), shared_pool(current), memory)
        known = known.set(container.id, entry)
        cpus = entry.cpus
        if cpus and (container.cpus != cpus or memory.mems or memory.hugepage_limits):
            # The runtime does not report mems or hugetlb limits: re-assert them.
            updates.append(_own_update(container.id, cpus, memory))
        current = dataclasses.replace(current, containers=known, owners=dict(owners))
    effects: list[Effect] = []
    if adopted:
        effects.append(WriteCheckpoint(current))
        for claim in adopted:
            effects.append(
                WriteCdiSpec(claim.ref.uid, claim.cpus, env_entry(claim.ref.uid, claim.cpus))
            )
    effects.append(ReplySynchronize(tuple(updates)))
    return current, tuple(effects)


def _renamed_owner(owner: Owner, uid: str, running: list[ContainerInfo]) -> Owner:
    """``owner`` of claim ``uid``, renamed to a running container of its pod naming the claim
    when none of them has its name.

    The two enforcers name a consumer differently: NRI by container name, the cgroup fallback
    (which sees no names) by the claims its env names. At a handover between them, the same
    running container reports another name; without this it would be taken for a second
    consumer and moved to the shared pool. A container of another pod never takes a claim over.
    """
    same_pod = []
    for container in running:
        if container.pod.uid != owner.pod_uid:
            continue
        if container.name == owner.container:
            return owner
        try:
            if uid in parse_env(container.env):
                same_pod.append(container)
        except CpusetEnvError:
            continue
    if not same_pod:
        return owner
    return Owner(owner.pod_uid, same_pod[0].name, same_pod[0].kind)


def _has_claim_env(container: ContainerInfo) -> bool:
    return any(e.startswith(ENV_PREFIX) for e in container.env)


def _prepare_memory(state: NodeState, event: PrepareMemory) -> tuple[NodeState, tuple[Effect, ...]]:
    held = dict(state.memory)
    results: dict[str, MemoryPrepareOutcome] = {}
    new: list[MemoryAssignment] = []
    ready: list[MemoryAssignment] = []
    for ref in event.claims:
        fetched = _fetched(ref, event.fetched.get(ref.uid))
        if isinstance(fetched, ClaimFailed):
            results[ref.uid] = fetched
            continue
        try:
            assignment = prepare_memory(
                ref.uid, fetched, state.config.memory_devices, held, pool=state.config.pool
            )
        except MemoryClaimError as exc:
            results[ref.uid] = ClaimFailed(f"ResourceClaim {ref}: {exc}")
            continue
        if not assignment.grants:
            # No result of the memory driver: nothing to hold, nothing to inject.
            results[ref.uid] = MemoryPrepared(assignment)
            continue
        if held.get(ref.uid) != assignment:  # new, or an adopted claim named by the kubelet
            held[ref.uid] = assignment
            new.append(assignment)
        ready.append(assignment)
        results[ref.uid] = MemoryPrepared(assignment, (memory_cdi_device_id(ref.uid),))
    after = dataclasses.replace(state, memory=held) if new else state
    effects: list[Effect] = []
    if new:
        effects.append(WriteCheckpoint(after))
    effects.extend(WriteMemoryCdiSpec(a.claim_uid, tuple(memory_env(a))) for a in ready)
    effects.append(ReplyPrepareMemory(results))
    return after, tuple(effects)


def _unprepare_memory(
    state: NodeState, event: UnprepareMemory
) -> tuple[NodeState, tuple[Effect, ...]]:
    held = dict(state.memory)
    for ref in event.claims:
        held.pop(ref.uid, None)
    effects: list[Effect] = []
    after = state
    if len(held) != len(state.memory):
        after = dataclasses.replace(state, memory=held)
        effects.append(WriteCheckpoint(after))
    # Removing the spec of a claim we do not know is harmless and clears leftovers.
    effects.extend(RemoveMemoryCdiSpec(ref.uid) for ref in event.claims)
    effects.append(ReplyUnprepare({ref.uid: ClaimUnprepared() for ref in event.claims}))
    return after, tuple(effects)


def _topology_changed(state: NodeState, topology: Topology) -> tuple[NodeState, tuple[Effect, ...]]:
    devices = _devices(topology, state.config)
    after = dataclasses.replace(state, topology=topology, devices=devices)
    effects: list[Effect] = []
    offline = tuple(
        (claim.ref, claim.cpus - topology.online)
        for _, claim in sorted(state.claims.items())
        if not claim.cpus <= topology.online
    )
    if offline:
        effects.append(ReportOfflineClaims(offline))
    if devices != dict(state.devices):
        effects.append(RepublishSlices("the CPU topology changed"))
    updates = shared_updates(after)
    if updates:
        effects.append(UpdateContainers(updates))
        after = _record_updates(after, updates)
    return after, tuple(effects)


# --- checkpoint payload ------------------------------------------------------------------------


def snapshot(state: NodeState) -> dict[str, Any]:
    """The JSON-ready payload a checkpoint stores: the prepared claims (containers are not
    stored; the runtime's Synchronize rebuilds them). The shell adds versioning and a checksum.
    """
    return {
        "claims": [snapshot_claim(c) for _, c in sorted(state.claims.items())],
        **snapshot_rest(state),
    }


def snapshot_claim(claim: PreparedClaim) -> dict[str, Any]:
    """One entry of ``snapshot(state)["claims"]``: a function of the claim alone, so a shell
    that writes the checkpoint often can keep each claim's serialized form while it holds."""
    return {
        "uid": claim.ref.uid,
        "namespace": claim.ref.namespace,
        "name": claim.ref.name,
        "cpus": str(claim.cpus),
        "adopted": claim.adopted,
        "devices": [
            {
                "request": d.request,
                "pool": d.pool,
                "device": d.device,
                "cpus": str(d.cpus),
                **({"shareID": d.share_id} if d.share_id else {}),
            }
            for d in claim.devices
        ],
    }


def snapshot_rest(state: NodeState) -> dict[str, Any]:
    """``snapshot(state)`` without ``claims``; every key of it sorts after ``"claims"``."""
    return {
        "pool": state.config.pool,
        "mode": str(state.config.mode),
        "groupBy": str(state.config.group_by),
        "reserved": str(state.config.reserved),
        "memory": [assignment_to_json(a) for _, a in sorted(state.memory.items())],
    }


def restore(payload: Mapping[str, Any], topology: Topology, config: NodeConfig) -> NodeState:
    """The state a :func:`snapshot` payload describes, on ``topology`` with ``config``.

    Raises :class:`InvalidValueError` naming the bad entry when the payload is malformed or two
    claims share a CPU. Claims on CPUs now offline are kept (see ``TopologyChanged``).
    """
    origin = "checkpoint"
    raw = payload.get("claims")
    if not isinstance(raw, list):
        raise InvalidValueError("'claims' is not a list", value=raw, origin=origin)
    claims: list[PreparedClaim] = []
    for index, entry in enumerate(raw):
        where = f"{origin} claims[{index}]"
        try:
            devices = tuple(
                DeviceCpus(
                    request=str(d["request"]),
                    pool=str(d["pool"]),
                    device=str(d["device"]),
                    cpus=CpuSet.parse(str(d["cpus"]), origin=where),
                    share_id=str(d["shareID"]) if d.get("shareID") else None,
                )
                for d in entry.get("devices", [])
            )
            claim = PreparedClaim(
                ref=ClaimRef(str(entry["namespace"]), str(entry["name"]), str(entry["uid"])),
                cpus=CpuSet.parse(str(entry["cpus"]), origin=where),
                devices=devices,
                adopted=bool(entry.get("adopted", False)),
            )
        except CpuSetParseError:
            raise
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidValueError(
                f"malformed claim entry ({exc!r})", value=entry, origin=where
            ) from exc
        claims.append(claim)
    # Checkpoints written before the memory driver have no "memory" section: none held.
    raw_memory = payload.get("memory", [])
    if not isinstance(raw_memory, list):
        raise InvalidValueError("'memory' is not a list", value=raw_memory, origin=origin)
    memory = [
        assignment_from_json(entry, origin=f"{origin} memory[{index}]")
        for index, entry in enumerate(raw_memory)
    ]
    return NodeState.initial(topology, config, claims, memory)
