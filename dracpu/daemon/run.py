"""``dracpu run``: start-up, the supervised task group, graceful stop.

Start-up, in order, before anything answers:

1. log the effective configuration in one line;
2. read the topology from ``--sysfs-root``;
3. load the checkpoint (:mod:`dracpu.checkpoint`). A newer format refuses to start. A corrupt
   one is logged in one line and kept aside, and the state is rebuilt from the CDI specs on disk
   (claims adopted by UID; the API's claims fill in their names, and those the API no longer has
   are released after the grace period);
4. make the CDI directory match the state (missing specs rewritten, orphans removed).

Then one trio nursery runs the state :class:`~dracpu.daemon.owner.Owner`, the status socket, the
signal watcher and the supervised group: the kubelet plugin servers, the slice publisher, the
claim cache, the claim status writer and the restart-recovery task (slots for the NRI plugin and
the HTTP endpoint of later issues). A failed member cancels and restarts the whole group with
the shared bounded, jittered backoff, the reason logged. The owner and its state live outside
the group, so a restart loses nothing.

SIGTERM/SIGINT stop gracefully: the group is cancelled (our sockets are removed; ResourceSlices
are left for the kubelet to manage; the state is already on disk) and the process exits 0. A
second signal, or 30 s without finishing, exits at once with status 1.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import httpx
import trio

from dracpu import DRIVER_NAME
from dracpu.backoff import Backoff
from dracpu.cdi import CdiDir
from dracpu.checkpoint import CheckpointStore, CheckpointVersionError
from dracpu.core import node
from dracpu.core.claims import ClaimRef
from dracpu.core.cpuset import CpuSet
from dracpu.core.memory_prepare import adopt_memory, memory_env
from dracpu.core.memory_slices import MemoryDevice, MemorySliceOptions
from dracpu.core.memory_slices import memory_devices as memory_devices_of
from dracpu.core.slices import SliceOptions, build_devices, build_slice_specs
from dracpu.core.topology import Topology
from dracpu.daemon.claim_status import ClaimStatusWriter
from dracpu.daemon.config import RunConfig, node_name
from dracpu.daemon.enforcement import Enforcement
from dracpu.daemon.handler import DaemonClaimHandler
from dracpu.daemon.health import DriverParts, NodeHealth, device_health, node_health
from dracpu.daemon.memory import MEMORY_DRIVER, MemoryDriver
from dracpu.daemon.metadata import MetadataError, MetadataWriter
from dracpu.daemon.owner import Owner
from dracpu.daemon.status import serve_status, status_document
from dracpu.errors import DracpuError, InvalidValueError
from dracpu.kube.claims import ClaimCache, allocated_to_node
from dracpu.kube.client import KubeClient
from dracpu.kube.config import load_config
from dracpu.kube.errors import NotFoundError
from dracpu.kube.publisher import PublisherHealth, SlicePublisher
from dracpu.kube.resources import RESOURCE_CLAIMS
from dracpu.kubelet import (
    HealthBoard,
    KubeletPluginConfig,
    RegistrationState,
    RegistrationStatusBoard,
    serve_kubelet_plugin,
)
from dracpu.logs import LogFormat, RecentLines, configure_logging, fields
from dracpu.memory_cdi import MemoryCdiDir
from dracpu.ops.http import Endpoint, HealthPart, serve_endpoint
from dracpu.ops.metrics import AllocationCounts, DriverMetrics
from dracpu.sysfs import read_topology
from dracpu.sysfs_memory import read_memory
from dracpu.uevents import Uevent, cpu_events, deliver_batches, open_uevent_socket

__all__ = ["EXIT_FAILED", "STOP_GRACE", "Daemon", "load_state", "main", "run_daemon"]

_log = logging.getLogger("dracpu.daemon")

EXIT_FAILED = 1
STOP_GRACE = 30.0
GROUP_BACKOFF = Backoff(initial=1.0, maximum=60.0)
ENDPOINT_BACKOFF = Backoff(initial=1.0, maximum=30.0)
HEALTHY_RUN = 60.0
"""A group that ran this long without failing starts its next backoff from the beginning."""


def load_state(
    topology: Topology,
    config: node.NodeConfig,
    store: CheckpointStore,
    cdi: CdiDir,
    memory_cdi: MemoryCdiDir | None = None,
) -> tuple[node.NodeState, str]:
    """The state to start from, and how it was obtained ("fresh", "checkpoint", "rebuilt").

    Rebuilding adopts CPU claims from the ``dra.cpu`` specs and, with ``memory_cdi``, memory
    claims from the ``dra.memory`` specs (against ``config.memory_devices``). Raises
    :class:`CheckpointVersionError` for a checkpoint of a newer dracpu.
    """
    loaded = store.load()
    if loaded.status == "loaded":
        assert loaded.body is not None
        try:
            return node.restore(loaded.body, topology, config), "checkpoint"
        except InvalidValueError as exc:
            reason = f"checkpoint {store.path}: {exc}"
            aside = store.keep_aside()
            loaded = dataclasses.replace(loaded, status="corrupt", reason=reason, kept_aside=aside)
    cpu_specs = cdi.read_all()
    memory_specs = memory_cdi.read_all() if memory_cdi is not None else {}
    if loaded.status == "absent" and not cpu_specs and not memory_specs:
        return node.NodeState.initial(topology, config), "fresh"
    # Corrupt, or absent while CDI specs exist: rebuild from the specs (adopted claims).
    claims = []
    held = CpuSet()
    for uid, cpus in sorted(cpu_specs.items()):
        if cpus is None or not cpus or not cpus.isdisjoint(held) or cpus - topology.online:
            continue
        held = held | cpus
        claims.append(node.PreparedClaim(ref=ClaimRef("", "", uid), cpus=cpus, adopted=True))
    memory, skipped = adopt_memory(
        memory_specs, config.memory_devices, pool=config.pool, origin=f"CDI dir {cdi.root}"
    )
    for why in skipped.values():
        _log.warning("memory claim not adopted (its spec will be removed): %s", why)
    state = node.NodeState.initial(topology, config, claims, memory.values())
    if loaded.status == "corrupt":
        _log.error(
            "checkpoint unusable (%s); kept it as %s; rebuilt %d claim(s) and %d memory "
            "claim(s) from the CDI specs",
            loaded.reason,
            loaded.kept_aside,
            len(claims),
            len(memory),
        )
    else:
        _log.warning(
            "no checkpoint but CDI specs found: adopted %d claim(s) and %d memory claim(s)",
            len(claims),
            len(memory),
        )
    store.write(node.snapshot(state))
    return state, "rebuilt"


class _TaskFailed(DracpuError):
    """A member of the supervised group stopped; names the member."""


@dataclass
class Daemon:
    """Everything one ``dracpu run`` holds; built by :func:`run_daemon` (tests build it too)."""

    config: RunConfig
    node_name: str
    topology: Topology
    owner: Owner
    client: KubeClient
    publisher: SlicePublisher
    cache: ClaimCache
    status_writer: ClaimStatusWriter
    registration: RegistrationStatusBoard = field(default_factory=RegistrationStatusBoard)
    health: HealthBoard = field(default_factory=HealthBoard)
    started_at: float = field(default_factory=time.monotonic)
    start_kind: str = "fresh"
    restarts: int = 0
    last_failure: str | None = None
    released_at_start: tuple[str, ...] = ()
    recovery_done: bool = False
    start_claims: tuple[str, ...] = ()
    """Claim UIDs held at start (from the checkpoint or CDI): what restart recovery checks."""
    timeline: dict[str, float] = field(default_factory=dict)
    plugin_config: KubeletPluginConfig | None = None
    enforcement: Enforcement | None = None
    memory: MemoryDriver | None = None
    """The ``dra.memory`` driver, when ``--memory-driver`` is on."""
    metrics: DriverMetrics = field(default_factory=DriverMetrics)
    recent_logs: RecentLines | None = None
    """The last log lines, served at ``/logs`` (set by :func:`main`)."""
    endpoint_addresses: list[str] = field(default_factory=list)
    """Where the HTTP endpoint listens (``host:port``), once it does."""
    hotplug: str = "starting"
    """``listening``, ``unavailable: <why>`` or ``starting``: the CPU uevent listener."""
    topology_changes: int = 0
    uevent_quiet: float = 0.2
    """Debounce of CPU uevent bursts (see :func:`dracpu.uevents.deliver_batches`)."""
    _counts_for: tuple[object, AllocationCounts] | None = None
    _attributes_for: tuple[object, dict[str, Any]] | None = None

    def _slice_options(self, state: node.NodeState) -> SliceOptions:
        """The slice model's options for ``state``'s node, hiding nothing."""
        options = state.config.slice_options(expose_pcie_roots=self.config.expose_pcie_roots)
        if self.config.publish_node_allocatable_resource_mapping:
            options = dataclasses.replace(options, node_allocatable_mapping=True)
        return options

    def slice_specs(self, state: node.NodeState) -> list[dict[str, Any]]:
        """The desired ResourceSlice specs for ``state``: its topology, with the CPUs of claims
        the devices do not stand for hidden (see :attr:`SliceOptions.hidden`)."""
        options = dataclasses.replace(
            self._slice_options(state), hidden=node.unaccounted_held(state)
        )
        return build_slice_specs(state.topology, options)

    def republish(self, state: node.NodeState) -> None:
        """Owner hook for ``RepublishSlices``: new desired slices and device health."""
        self.publisher.set_desired(self.slice_specs(state))
        self.health.publish(device_health(state))

    def node_health(self) -> NodeHealth:
        """The node's one health model (status, health stream, later /healthz)."""
        memory = self.memory
        parts = (
            DriverParts(
                memory.plugin_config.driver_name,
                memory.publisher.health(),
                memory.registration.state,
            )
            if memory is not None
            else None
        )
        return node_health(
            self.owner.state, self.publisher.health(), self.registration.state, parts
        )

    def handler(self) -> DaemonClaimHandler:
        """The kubelet claim handler bound to this daemon's owner and claim cache."""
        return DaemonClaimHandler(
            self.owner,
            self.cache,
            pool=self.node_name,
            driver=self.publisher.driver,
            metrics=self.metrics,
            metadata=self.metadata_writer(),
            attributes_of=self.device_attributes,
        )

    def metadata_writer(self) -> MetadataWriter | None:
        """Where KEP-5304 device metadata goes (None when ``deviceMetadata`` is off)."""
        if not self.config.device_metadata:
            return None
        return MetadataWriter(
            driver=self.publisher.driver,
            plugin_data_dir=self.config.kubelet_root_dir / "plugins" / self.publisher.driver,
            cdi_dir=self.config.cdi_dir,
        )

    def device_attributes(self, device: str) -> Mapping[str, Mapping[str, Any]]:
        """A device's attributes in the slice model (cached per topology: attributes do not
        depend on the claims, so a prepare does not rebuild them)."""
        state = self.owner.state
        cached = self._attributes_for
        if cached is None or cached[0] is not state.topology:
            devices = build_devices(state.topology, self._slice_options(state))
            table = {d["name"]: d.get("attributes", {}) for d in devices}
            cached = self._attributes_for = (state.topology, table)
        found: Mapping[str, Mapping[str, Any]] = cached[1].get(device, {})
        return found

    def allocation_counts(self) -> AllocationCounts:
        """The allocation gauges, computed once per node state (states are immutable), so a
        scrape costs a dictionary lookup, not a walk over the claims."""
        state = self.owner.state
        cached = self._counts_for
        if cached is not None and cached[0] is state:
            return cached[1]
        mask = 0
        for claim in state.claims.values():
            mask |= claim.cpus.mask
        allocated = CpuSet(mask)
        reserved = state.config.reserved & state.topology.online
        counts = AllocationCounts(
            allocated_cpus=len(allocated),
            available_cpus=len(state.topology.online - reserved - allocated),
            reserved_cpus=len(reserved),
            active_claims=len(state.claims),
        )
        self._counts_for = (state, counts)
        return counts

    def wire_metrics(self) -> None:
        """Point the scrape-time series at this daemon's parts (called once by build_daemon)."""
        self.metrics.watch_allocation(self.allocation_counts)
        self.metrics.watch_slice_writes(self._slice_writes)
        enforcement = self.enforcement
        self.metrics.watch_fallback(
            lambda: enforcement is not None and enforcement.active == "cgroups"
        )
        self.owner.on_checkpoint_written = self.metrics.checkpoint_write_seconds.observe
        if enforcement is not None:
            requests = self.metrics.nri_request_seconds
            enforcement.plugin.on_request = lambda m, s: requests.labels(event=m).observe(s)

    def _slice_writes(self) -> dict[str, int]:
        h = self.publisher.health()
        return {"create": h.creates, "update": h.updates, "delete": h.deletes}

    def health_parts(self) -> list[HealthPart]:
        """What ``/healthz`` checks: kubelet registration, slices in sync, enforcement active,
        and with ``--memory-driver`` the ``dra.memory`` registration and slices too.

        ``/readyz`` checks all but enforcement (it may still be handing over at start).
        """
        parts = _driver_parts("", self.registration.state, self.publisher.health())
        active = self.enforcement.active if self.enforcement is not None else "none"
        parts.append(
            HealthPart(
                "enforcement",
                active != "none",
                "neither NRI connected nor the cgroup fallback running",
                for_readiness=False,
            )
        )
        memory = self.memory
        if memory is not None:
            parts += _driver_parts("memory-", memory.registration.state, memory.publisher.health())
        return parts

    def endpoint(self) -> Endpoint:
        """The HTTP endpoint's sources."""
        return Endpoint(
            health=self.health_parts,
            metrics=self.metrics,
            status=self.status,
            recent_logs=self._recent_text,
        )

    def _recent_text(self) -> str:
        recent = self.recent_logs
        return recent.text() if recent is not None else "(no log lines kept in this process)\n"

    async def _serve_http(self) -> NoReturn:
        """Serve the HTTP endpoint. An address that cannot be bound (port taken) is retried
        with backoff here, logged, without failing the group: the kubelet plugin and the
        slices matter more than the probes. Cancellation closes the listener."""
        retries = ENDPOINT_BACKOFF.counter()
        while True:
            failure: OSError | None = None
            try:
                async with trio.open_nursery() as nursery:
                    bound = await nursery.start(
                        lambda task_status: serve_endpoint(
                            self.endpoint(), self.config.bind_address, task_status=task_status
                        )
                    )
                    self.endpoint_addresses[:] = bound
                    _log.info("HTTP endpoint on %s", ", ".join(bound))
            except* OSError as group:
                failure = next(e for e in _leaves(group) if isinstance(e, OSError))
            if failure is None:
                raise _TaskFailed("the HTTP endpoint stopped")
            self.endpoint_addresses.clear()
            delay = retries.next_delay()
            _log.error(
                "HTTP endpoint on %s unavailable (%s); retrying in %.1f s",
                self.config.bind_address,
                failure,
                delay,
            )
            await trio.sleep(delay)

    async def _hotplug(self) -> NoReturn:
        """Follow CPU uevents: on each debounced burst, re-read the topology and apply it.

        Without netlink (some sandboxes) it says so once and idles. Cancellation closes the
        socket; a burst being gathered is dropped (the next start re-reads sysfs anyway).
        """
        try:
            sock = await open_uevent_socket()
        except OSError as exc:
            if not self.hotplug.startswith("unavailable"):
                _log.warning("CPU hotplug not followed: kernel uevents unavailable (%s)", exc)
            self.hotplug = f"unavailable: {exc}"
            await trio.sleep_forever()
        with sock:
            self.hotplug = "listening"
            # Changes made while nobody listened (start-up, a group restart) are caught here.
            await self._on_cpu_events(())
            await deliver_batches(
                cpu_events(sock), self._on_cpu_events, quiet=self.uevent_quiet, max_wait=1.0
            )
        raise _TaskFailed("the uevent socket closed")

    async def _on_cpu_events(self, batch: tuple[Uevent, ...]) -> None:
        """Re-read the topology after a burst of CPU uevents; a change goes through the owner
        (TopologyChanged: slices republished, health updated, shared containers widened)."""
        cpus = sorted({e.cpu for e in batch if e.cpu is not None})
        try:
            topology = await trio.to_thread.run_sync(read_topology, self.config.sysfs_root)
        except DracpuError as exc:
            _log.error("CPU uevents %s: cannot re-read the topology: %s", cpus, exc)
            return
        if topology == self.owner.state.topology:
            _log.debug("CPU uevents %s: topology unchanged", cpus)
            return
        _log.info(
            "CPU uevents %s: topology changed, online %s -> %s",
            cpus,
            self.owner.state.topology.online,
            topology.online,
        )
        applied = await self.owner.apply(node.TopologyChanged(topology))
        if applied.error is not None:
            _log.error("topology change not applied: %s", applied.error)
            return
        self.topology = topology
        self.topology_changes += 1

    def group(self) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
        """The supervised members, by name."""
        assert self.plugin_config is not None
        plugin_config = self.plugin_config

        async def kubelet() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: serve_kubelet_plugin(
                        plugin_config,
                        self.handler(),
                        self.health,
                        registration=self.registration,
                        task_status=task_status,
                    )
                )
                self.timeline.setdefault("kubelet_sockets", time.monotonic() - self.started_at)
                nursery.start_soon(self._watch_registration)

        return [
            ("kubelet plugin", kubelet),
            ("slice publisher", self.publisher.run),
            ("claim cache", self.cache.run),
            ("claim status writer", self.status_writer.run),
            ("restart recovery", self._recover),
            ("milestones", self._milestones),
            *([("enforcement", self.enforcement.run)] if self.enforcement is not None else []),
            *(self.memory.members(self.owner) if self.memory is not None else []),
            ("http endpoint", self._serve_http),
            ("cpu hotplug", self._hotplug),
        ]

    async def _watch_registration(self) -> None:
        seen = 0
        while True:
            state = await self.registration.wait_for_notification(seen)
            seen = state.notifications
            if state.registered:
                self.timeline.setdefault("registered", time.monotonic() - self.started_at)

    async def _milestones(self) -> NoReturn:
        await self.publisher.in_sync.wait()
        elapsed = time.monotonic() - self.started_at
        self.timeline.setdefault("slices_in_sync", elapsed)
        _log.info("ResourceSlices published %.3f s after start", elapsed)
        await trio.sleep_forever()

    async def _recover(self) -> NoReturn:
        """Release claims prepared before the restart that the API no longer has (after the
        grace period from start, once the claim cache listed). Runs once per process.

        Cancellation: a release in flight completes in the owner (see Owner.apply).
        """
        if not self.recovery_done:
            start_uids = set(self.start_claims)
            wait = self.config.release_grace_period - (time.monotonic() - self.started_at)
            await trio.sleep(max(wait, 0.0))
            await self.cache.reflector.synced.wait()
            gone = [
                c.ref
                for uid, c in sorted(self.owner.state.claims.items())
                if uid in start_uids and await self._gone(c.ref)
            ]
            if gone:
                _log.info(
                    "releasing %d claim(s) deleted from the API while dracpu was down: %s",
                    len(gone),
                    ", ".join(str(r) for r in gone),
                )
                applied = await self.owner.apply(node.Unprepare(tuple(gone)))
                self._remove_metadata(gone, applied.reply)
            self.released_at_start = tuple(r.uid for r in gone)
            self.recovery_done = True
        await trio.sleep_forever()

    def _remove_metadata(self, released: list[ClaimRef], reply: object) -> None:
        """Remove the device metadata of claims restart recovery released (the kubelet's
        unprepare removes it otherwise). A failure is logged and leaves those files behind: the
        claim is released either way (its CPUs must not stay held for files)."""
        writer = self.metadata_writer()
        if writer is None or not isinstance(reply, node.ReplyUnprepare):
            return
        for ref in released:
            if isinstance(reply.results.get(ref.uid), node.ClaimFailed):
                continue
            try:
                writer.remove(namespace=ref.namespace, name=ref.name, uid=ref.uid)
            except MetadataError as exc:
                _log.warning("restart recovery: %s", exc, extra=fields(claim=ref.uid))

    async def _gone(self, ref: ClaimRef) -> bool:
        if any((c.get("metadata") or {}).get("uid") == ref.uid for c in self.cache.claims()):
            return False
        if not ref.name:
            return True  # Adopted from a CDI spec, and no claim of ours has its UID.
        try:
            claim = await self.client.get(RESOURCE_CLAIMS, ref.name, namespace=ref.namespace)
        except NotFoundError:
            return True
        if (claim.get("metadata") or {}).get("uid") != ref.uid:
            return True
        return not allocated_to_node(
            claim, node=self.node_name, driver=self.publisher.driver, pool=self.node_name
        )

    async def supervise(self, backoff: Backoff = GROUP_BACKOFF) -> NoReturn:
        """Run :meth:`group` as a unit forever, restarting it after a failure (see
        :func:`supervise`). Cancellation: cancels every member (kubelet sockets removed)."""
        await supervise(self.group, backoff, self._record_failure)

    def _record_failure(self, reason: str) -> None:
        self.metrics.group_restarts.labels(reason=reason.split(":", 1)[0][:64]).inc()
        self.restarts += 1
        self.last_failure = reason

    def status(self) -> dict[str, Any]:
        """The status document served on the status socket."""
        return status_document(self)


def _driver_parts(prefix: str, reg: RegistrationState, pub: PublisherHealth) -> list[HealthPart]:
    """One driver's ``kubelet-registration`` and ``resourceslices`` parts, names led by
    ``prefix`` (``memory-`` for ``dra.memory``)."""
    if reg.registered:
        registration = HealthPart(f"{prefix}kubelet-registration", True)
    elif reg.notifications:
        registration = HealthPart(f"{prefix}kubelet-registration", False, f"rejected: {reg.error}")
    else:
        registration = HealthPart(f"{prefix}kubelet-registration", False, "not registered yet")
    slices = HealthPart(
        f"{prefix}resourceslices",
        pub.state == "in-sync",
        f"{pub.state}" + (f": {pub.last_error}" if pub.last_error else ""),
    )
    return [registration, slices]


Members = Callable[[], list[tuple[str, Callable[[], Awaitable[object]]]]]


async def supervise(
    group: Members,
    backoff: Backoff = GROUP_BACKOFF,
    on_failure: Callable[[str], None] = lambda _: None,
    *,
    healthy_run: float = HEALTHY_RUN,
) -> NoReturn:
    """Run the members ``group()`` returns in one nursery; when any of them fails (or returns),
    all are cancelled, the reason is logged and passed to ``on_failure``, and after the next
    backoff delay a fresh ``group()`` starts. A group that ran ``healthy_run`` seconds resets the
    backoff. Cancellation: cancels every member and returns nothing.
    """
    retries = backoff.counter()
    while True:
        began = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                for name, member in group():
                    nursery.start_soon(_member, name, member)
        except Exception as exc:
            reason = _reason(exc)
        else:  # pragma: no cover (members never return without raising)
            reason = "the group stopped"
        if trio.current_time() - began >= healthy_run:
            retries.reset()
        delay = retries.next_delay()
        on_failure(reason)
        _log.error("task group failed (%s); restarting it in %.1f s", reason, delay)
        await trio.sleep(delay)


async def _member(name: str, member: Callable[[], Awaitable[object]]) -> None:
    try:
        await member()
    except DracpuError as exc:
        raise _TaskFailed(f"{name}: {exc}") from exc
    except Exception as exc:
        raise _TaskFailed(f"{name}: {type(exc).__name__}: {exc}") from exc
    raise _TaskFailed(f"{name} returned")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_reason(e) for e in exc.exceptions)
    return str(exc)


def build_daemon(
    config: RunConfig,
    *,
    hostname: Callable[[], str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    env: Mapping[str, str] | None = None,
) -> Daemon:
    """Read the topology, load the state, reconcile CDI and wire the parts (no server yet).

    Raises :class:`DracpuError` subclasses naming the bad input (topology, reserved CPUs,
    kubeconfig, a newer checkpoint).
    """
    env = os.environ if env is None else env
    started = time.monotonic()
    _log.info("dracpu run: effective configuration %s", config.log_line())
    topology = read_topology(config.sysfs_root)
    not_online = config.reserved_cpus - topology.online
    if not_online:
        raise InvalidValueError(
            f"CPUs {not_online} are not online (online: {topology.online})",
            value=str(config.reserved_cpus),
            origin="reservedCPUs",
        )
    name = node_name(config) if hostname is None else node_name(config, hostname)
    memory_topology = read_memory(config.sysfs_root) if config.memory_driver else None
    memory_devices: tuple[MemoryDevice, ...] = ()
    if memory_topology is not None:
        memory_devices = tuple(memory_devices_of(memory_topology, MemorySliceOptions(name)))
    node_config = node.NodeConfig(
        pool=name,
        mode=config.cpu_device_mode,
        group_by=config.group_by,
        reserved=config.reserved_cpus,
        defaults=config.allocation_defaults,
        driver=DRIVER_NAME,
        memory_devices=memory_devices,
        bind_memory_to_cpus=config.bind_memory_to_cpus,
    )
    store = CheckpointStore(config.state_dir)
    store.secure_dir()
    cdi = CdiDir(config.cdi_dir)
    memory_cdi = MemoryCdiDir(config.cdi_dir)
    state, kind = load_state(topology, node_config, store, cdi, memory_cdi)
    for what, fixed in (
        (
            "memory CDI specs",
            memory_cdi.reconcile(
                {uid: tuple(memory_env(a)) for uid, a in state.memory.items() if a.grants}
            ),
        ),
        ("CDI specs", cdi.reconcile({uid: c.cpus for uid, c in state.claims.items() if c.cpus})),
    ):
        if fixed.written or fixed.removed or fixed.strays:
            _log.info(
                "%s reconciled: %d rewritten, %d orphan(s) removed, %d stray temp file(s)",
                what,
                len(fixed.written),
                len(fixed.removed),
                len(fixed.strays),
            )
    _log.info(
        "node %s: %d CPUs online, %d claim(s) prepared (%s), shared pool %s",
        name,
        len(topology.online),
        len(state.claims),
        kind,
        state.shared_pool,
    )
    client = KubeClient(
        load_config(kubeconfig=config.kubeconfig or None, env=env), transport=transport
    )
    cache = ClaimCache(client, node_name=name)
    status_writer = ClaimStatusWriter(client, lookup=cache.cached)
    owner = Owner(
        state,
        checkpoint=store,
        cdi=cdi,
        on_claim_status=status_writer.submit,
        crash_at=env.get("DRACPU_TEST_CRASH_AT") or None,
        memory_cdi=memory_cdi,
    )
    daemon = Daemon(
        config=config,
        node_name=name,
        topology=topology,
        owner=owner,
        client=client,
        publisher=SlicePublisher(client, node_name=name),
        cache=cache,
        status_writer=status_writer,
        started_at=started,
        start_kind=kind,
        start_claims=tuple(sorted(state.claims)),
        # Calls run concurrently: the owner orders the transitions and commits those that
        # queue up together with one checkpoint write.
        plugin_config=KubeletPluginConfig(
            kubelet_root=config.kubelet_root_dir,
            pod_uid=env.get("POD_UID") or None,
            serialize=False,
        ),
    )
    owner.on_republish = daemon.republish
    if memory_topology is not None:
        daemon.memory = MemoryDriver(
            topology=memory_topology,
            node_name=name,
            publisher=SlicePublisher(client, node_name=name, driver=MEMORY_DRIVER),
            cache=ClaimCache(client, node_name=name, driver=MEMORY_DRIVER),
            plugin_config=dataclasses.replace(daemon.plugin_config, driver_name=MEMORY_DRIVER)
            if daemon.plugin_config is not None
            else KubeletPluginConfig(driver_name=MEMORY_DRIVER),
            start_claims=tuple(sorted(state.memory)),
            release_grace_period=config.release_grace_period,
            started_at=started,
        )
        daemon.memory.publisher.set_desired(daemon.memory.slice_specs())
        _log.info(
            "memory driver %s: %d device(s) (%s)",
            MEMORY_DRIVER,
            len(memory_devices),
            ", ".join(d.name for d in memory_devices) or "none",
        )
    daemon.enforcement = Enforcement(
        owner,
        mode=config.enforcement,
        nri_socket=config.nri_socket,
        cgroup_mount=config.cgroup_root,
        cgroup_driver=config.cgroup_driver,
        kubelet_cgroup_root=config.kubelet_cgroup_root,
    )
    daemon.wire_metrics()
    daemon.republish(state)
    return daemon


async def run_daemon(daemon: Daemon, *, stop_grace: float = STOP_GRACE) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status (0 after a graceful stop).

    Cancellation: stops everything like a signal does, then propagates.
    """
    stopping = trio.Event()
    async with trio.open_nursery() as outer:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    if stopping.is_set():
                        _log.error("second signal %s: exiting now", signal.Signals(signum).name)
                        logging.shutdown()
                        os._exit(EXIT_FAILED)
                    _log.info(
                        "%s: stopping (sockets removed, slices and state kept)",
                        signal.Signals(signum).name,
                    )
                    stopping.set()
                    timer = threading.Timer(stop_grace, _exit_late, args=(stop_grace,))
                    timer.daemon = True
                    timer.start()

        outer.start_soon(watch_signals)
        async with trio.open_nursery() as inner:
            await inner.start(daemon.owner.run)
            inner.start_soon(serve_status, daemon.config.state_dir, daemon.status)
            inner.start_soon(daemon.supervise)
            await stopping.wait()
            inner.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await daemon.client.aclose()
        _log.info("stopped")
        outer.cancel_scope.cancel()
    return 0


def _verbosity(flag: int | None, env: str) -> int:
    """``-v N`` when given, else ``DRACPU_LOG_LEVEL`` as a number or DEBUG/TRACE, else 0."""
    if flag is not None:
        return flag
    text = env.strip().upper()
    if text.isdigit():
        return int(text)
    return {"DEBUG": 4, "TRACE": 6}.get(text, 0)


def _exit_late(grace: float) -> None:
    _log.error("not stopped %.0f s after the signal: exiting now", grace)
    logging.shutdown()
    os._exit(EXIT_FAILED)


def main(
    config: RunConfig, *, verbosity: int | None = None, log_format: LogFormat = LogFormat.TEXT
) -> int:
    """Entry point of ``dracpu run`` after flag parsing; returns the exit status.

    ``verbosity`` is ``-v N``; without it ``DRACPU_LOG_LEVEL`` (a number, or DEBUG -> 4) is
    used, else 0.
    """
    recent = RecentLines()
    env_level = os.environ.get("DRACPU_LOG_LEVEL", "").strip().upper()
    configure_logging(_verbosity(verbosity, env_level), log_format, recent=recent)
    if verbosity is None and env_level in ("WARNING", "ERROR", "CRITICAL"):
        logging.getLogger().setLevel(env_level)
    try:
        daemon = build_daemon(config)
        daemon.recent_logs = recent
    except CheckpointVersionError as exc:
        _log.error("refusing to start: %s", exc)
        return EXIT_FAILED
    except DracpuError as exc:
        _log.error("cannot start: %s", exc)
        return EXIT_FAILED
    return trio.run(run_daemon, daemon)
