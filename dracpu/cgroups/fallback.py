"""Enforce the pinning policy by writing ``cpuset.cpus`` when NRI is not there.

:class:`CgroupEnforcer` watches the kubelet's pod cgroup tree (:mod:`dracpu.cgroups.tree`) with
inotify (``inotify_simple``: a small, maintained ctypes wrapper whose file descriptor trio waits
on with :func:`trio.lowlevel.wait_readable`). It asks the same decider as the NRI handler
(:class:`dracpu.nri.policy.Decider`, i.e. the same pure policy and node state) and writes the
answer:

- **Start**: every container cgroup below the root is read (cpuset, env) and handed over as one
  ``RuntimeSynchronized``, as NRI's Synchronize: pins kept, drift re-pinned, valid upstream
  claims adopted, shared containers re-asserted.
- **New container**: a directory appearing at container depth (``pod<uid>/<id>``, or the
  systemd ``…pod<uid>.slice/<runtime>-<id>.scope``) is a ``ContainerCreated``; its env comes
  from ``/proc/<pid>/environ`` of a process in ``cgroup.procs``. Until a process has exec'd the
  container's command its env is the runtime's, so the container is re-read on every
  ``cgroup.procs`` change and every ``poll`` seconds for ``settle`` seconds after it appeared;
  a changed ``DRA_CPUSET_*`` set is decided anew. Until then it runs on the shared pool, which
  never overlaps a claim.
- **Rewrites**: an ``IN_MODIFY`` of a known container's ``cpuset.cpus`` that leaves it different
  from the policy's cpuset is undone at once.
- **Removal**: the directory's deletion is a ``ContainerRemoved``.
- **Rejections** cannot fail a container that already exists: a rejected container (forged env,
  second consumer) is placed on the shared pool and the reason is logged.

cgroups carry no container names, so the consumer of a claim is identified by the pod UID and
the claims its env names (a restarted container is the same consumer); two containers of one pod
with the same claim are not told apart here, as they are under NRI.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from dracpu.cgroups import inotify
from dracpu.cgroups.layout import CgroupContainer, identify, is_pod_dir, is_qos_dir
from dracpu.cgroups.tree import PROCS, CgroupTree, CgroupTreeError, HugetlbTree, read_environ
from dracpu.core import node
from dracpu.core.cdi import ENV_PREFIX
from dracpu.core.cpuset import CpuSet
from dracpu.core.memory_pinning import hugetlb_size_name
from dracpu.core.pinning import ContainerInfo, ContainerUpdate, PodInfo
from dracpu.nri.policy import Decider

__all__ = ["CgroupEnforcer", "Pinned"]

_log = logging.getLogger("dracpu.cgroups")

_DIR_MASK = (
    inotify.CREATE
    | inotify.DELETE
    | inotify.MODIFY
    | inotify.MOVED_TO
    | inotify.MOVED_FROM
    | inotify.DELETE_SELF
)


@dataclass(frozen=True, slots=True)
class Pinned:
    """A container cpuset written, with its latency from first sight (for benches and logs)."""

    container_id: str
    cpus: CpuSet
    seconds: float


@dataclass(slots=True)
class _Seen:
    path: Path
    ident: CgroupContainer
    first_seen: float
    settle_until: float
    claims_env: tuple[str, ...] | None = None


class CgroupEnforcer:
    """See the module docstring. ``proc`` is the procfs root; ``on_pinned`` observes writes."""

    def __init__(
        self,
        tree: CgroupTree,
        decider: Decider,
        *,
        proc: Path = Path("/proc"),
        settle: float = 5.0,
        poll: float = 0.05,
        on_pinned: Callable[[Pinned], None] = lambda _: None,
        hugetlb: HugetlbTree | None = None,
    ) -> None:
        self.tree = tree
        self.hugetlb = hugetlb
        self.decider = decider
        self.proc = proc
        self.settle = settle
        self.poll = poll
        self.on_pinned = on_pinned
        self._seen: dict[str, _Seen] = {}
        self._by_path: dict[Path, str] = {}
        self._wds: dict[int, Path] = {}
        self._inotify: inotify.Inotify | None = None
        # One decision at a time: the event and settle loops both decide, with awaits between.
        self._lock = trio.Lock()

    # ------------------------------------------------------------------ public

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch and enforce until cancelled; reports started after the initial reconcile.

        Cancellation: the inotify descriptor is closed; cpusets written stay as they are (the
        next enforcer, or NRI's Synchronize, reconciles them).
        """
        with inotify.Inotify() as ino:
            self._inotify = ino
            try:
                await self._watch_tree()
                await self.reconcile()
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._settle_loop)
                    await self._event_loop(ino)
            finally:
                self._inotify = None
                self._wds.clear()

    async def reconcile(self) -> None:
        """Read every container cgroup and hand them to the policy as one Synchronize.

        Cancellation: a queued event is still applied; cpusets may be partly written (the
        next reconcile finishes them).
        """
        async with self._lock:
            await self._reconcile()

    async def _reconcile(self) -> None:
        infos = []
        for _, seen in sorted(self._seen.items()):
            env = self._env(seen) or ()
            seen.claims_env = _claims_env(env)
            infos.append(self._info(seen, env, with_cpus=True))
        reply = await self.decider.apply(node.RuntimeSynchronized(tuple(infos)))
        if isinstance(reply, node.ReplySynchronize):
            self.apply_updates(reply.updates)
        _log.info(
            "cgroup fallback: reconciled %d container(s) under %s", len(infos), self.tree.root
        )

    def submit(self, effect: node.UpdateContainers) -> None:
        """Apply the state owner's ``UpdateContainers`` (pool widening) now; never raises."""
        self.apply_updates(effect.updates)

    def apply_updates(self, updates: tuple[ContainerUpdate, ...]) -> None:
        """Write each update's cpuset to the container's cgroup (unknown IDs are skipped)."""
        for update in updates:
            seen = self._seen.get(update.container_id)
            if seen is not None:
                self._write(seen, update.cpus)
                self._write_memory(seen, update.mems, update.hugepage_limits)

    # ------------------------------------------------------------------ tree walking

    def _watch(self, path: Path) -> None:
        assert self._inotify is not None
        try:
            wd = self._inotify.add_watch(path, _DIR_MASK)
        except OSError as exc:
            _log.debug("cannot watch %s: %s", path, exc)
            return
        self._wds[wd] = path

    async def _watch_tree(self) -> None:
        self._watch(self.tree.root)
        for child in _subdirs(self.tree.root):
            await self._dir_added(child, decide=False)

    async def _dir_added(self, path: Path, *, decide: bool) -> None:
        """A directory below the root appeared (or was found): watch and descend as needed."""
        parts = self.tree.parts(path)
        ident = identify(parts, self.tree.driver)
        if ident is not None:
            self._watch(path)
            now = time.monotonic()
            seen = _Seen(path, ident, now, now + self.settle)
            self._seen[ident.container_id] = seen
            self._by_path[path] = ident.container_id
            if decide:
                await self._evaluate(seen)
            return
        name = parts[-1]
        depth_ok = (len(parts) == 1 and is_qos_dir(name, self.tree.driver)) or (
            len(parts) <= 2 and is_pod_dir(name, self.tree.driver) is not None
        )
        if not depth_ok:
            return
        self._watch(path)
        for child in _subdirs(path):  # created before the watch was in place
            if child not in self._by_path:
                await self._dir_added(child, decide=decide)

    async def _dir_removed(self, path: Path) -> None:
        cid = self._by_path.pop(path, None)
        if cid is None:
            return
        self._seen.pop(cid, None)
        async with self._lock:
            await self.decider.apply(node.ContainerRemoved(cid))

    # ------------------------------------------------------------------ decisions

    def _env(self, seen: _Seen) -> tuple[str, ...] | None:
        """The env of the first readable process in the cgroup; None when there is none."""
        for pid in self.tree.pids(seen.path):
            env = read_environ(pid, self.proc)
            if env is not None:
                return env
        return None

    def _info(self, seen: _Seen, env: tuple[str, ...], *, with_cpus: bool) -> ContainerInfo:
        claims = _claims_env(env)
        # No container names in cgroups: a claim's consumer is (pod, the claims it names).
        names = sorted({e.partition("=")[0] for e in claims})
        name = "claims:" + ",".join(names) if names else seen.ident.container_id
        return ContainerInfo(
            pod=PodInfo(uid=seen.ident.pod_uid),
            id=seen.ident.container_id,
            name=name,
            env=env,
            cpus=self.tree.read_cpus(seen.path) if with_cpus else None,
        )

    async def _evaluate(self, seen: _Seen) -> None:
        """:meth:`_decide` under the lock, unless the container went away meanwhile."""
        async with self._lock:
            if self._seen.get(seen.ident.container_id) is seen:
                await self._decide(seen)

    async def _decide(self, seen: _Seen) -> None:
        """Decide ``seen`` again if its driver env changed (or it is new); keep its cpuset.

        With no readable process (not started yet, or exited) a known container keeps its
        decision and a new one goes on the shared pool.
        """
        read = self._env(seen)
        cid = seen.ident.container_id
        known = self.decider.state.containers.get(cid)
        env = read or ()
        claims_env = _claims_env(env)
        if known is not None and (read is None or claims_env == seen.claims_env):
            self._enforce(seen, known.cpus)
            return
        seen.claims_env = claims_env
        if known is not None:
            await self.decider.apply(node.ContainerRemoved(cid))
        info = self._info(seen, env, with_cpus=False)
        reply = await self.decider.apply(node.ContainerCreated(info))
        if isinstance(reply, node.RejectContainer):
            _log.error("cgroup fallback: %s; it runs on the shared pool", reply.reason)
            bare = tuple(e for e in env if not e.startswith(ENV_PREFIX))
            reply = await self.decider.apply(
                node.ContainerCreated(self._info(seen, bare, with_cpus=False))
            )
        if isinstance(reply, node.AdjustContainer):
            self._write(seen, reply.cpus)
            self._write_memory(seen, reply.memory.mems_text, reply.memory.hugepage_limits)
            self.apply_updates(reply.updates)
            placed = self.decider.state.containers.get(cid)
            # The pin latency (`bench/bench_fallback_rig.py` reads these lines).
            _log.log(
                logging.INFO if placed is not None and placed.claims else logging.DEBUG,
                "cgroup fallback: container %s of pod uid %s on CPUs %s (%s), %.1f ms after "
                "its cgroup appeared",
                cid,
                seen.ident.pod_uid,
                reply.cpus,
                "claims " + ",".join(placed.claims) if placed and placed.claims else "shared",
                (time.monotonic() - seen.first_seen) * 1000,
            )
        elif isinstance(reply, node.RejectContainer):
            _log.error("cgroup fallback: %s; its cpuset is left as it is", reply.reason)

    def _enforce(self, seen: _Seen, cpus: CpuSet) -> None:
        if cpus and self.tree.read_cpus(seen.path) != cpus:
            self._write(seen, cpus)

    def _write(self, seen: _Seen, cpus: CpuSet) -> None:
        if not cpus:
            return
        try:
            self.tree.write_cpus(seen.path, cpus)
        except CgroupTreeError as exc:
            if seen.path.exists():
                _log.warning("cgroup fallback: %s", exc)
            # else: the container is gone; its deletion event follows.
            return
        self.on_pinned(Pinned(seen.ident.container_id, cpus, time.monotonic() - seen.first_seen))

    def _write_memory(
        self, seen: _Seen, mems: str, hugepage_limits: tuple[tuple[int, int], ...]
    ) -> None:
        """Write ``cpuset.mems`` and, where a v2 hugetlb tree exists, ``hugetlb.<size>.max``."""
        try:
            if mems:
                self.tree.write_mems(seen.path, mems)
            if hugepage_limits and self.hugetlb is not None:
                parts = self.tree.parts(seen.path)
                for size, limit in hugepage_limits:
                    self.hugetlb.write_limit(parts, hugetlb_size_name(size), limit)
        except CgroupTreeError as exc:
            if seen.path.exists():
                _log.warning("cgroup fallback: %s", exc)

    # ------------------------------------------------------------------ loops

    async def _event_loop(self, ino: inotify.Inotify) -> None:
        while True:
            for event in await ino.events():
                await self._handle(event)

    async def _handle(self, event: inotify.InotifyEvent) -> None:
        if event.mask & inotify.Q_OVERFLOW:
            _log.warning("cgroup fallback: inotify queue overflowed; rescanning the tree")
            await self._rescan()
            return
        parent = self._wds.get(event.wd)
        if parent is None:
            return
        if event.mask & inotify.IGNORED:
            self._wds.pop(event.wd, None)
            return
        path = parent / event.name if event.name else parent
        if event.mask & inotify.ISDIR and event.mask & (inotify.CREATE | inotify.MOVED_TO):
            await self._dir_added(path, decide=True)
        elif event.mask & inotify.ISDIR and event.mask & (inotify.DELETE | inotify.MOVED_FROM):
            await self._dir_removed(path)
        elif event.mask & inotify.MODIFY and parent in self._by_path:
            seen = self._seen.get(self._by_path[parent])
            if seen is None:
                return
            if event.name == PROCS:
                await self._evaluate(seen)
            elif event.name == "cpuset.cpus":
                known = self.decider.state.containers.get(seen.ident.container_id)
                if known is not None:
                    self._enforce(seen, known.cpus)

    async def _rescan(self) -> None:
        assert self._inotify is not None
        for wd in list(self._wds):
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(wd)
        self._wds.clear()
        self._seen.clear()
        self._by_path.clear()
        await self._watch_tree()
        await self.reconcile()

    async def _settle_loop(self) -> None:
        while True:
            await trio.sleep(self.poll)
            now = time.monotonic()
            for seen in list(self._seen.values()):
                if now <= seen.settle_until and seen.ident.container_id in self._seen:
                    await self._evaluate(seen)


def _claims_env(env: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(e for e in env if e.startswith(ENV_PREFIX)))


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir())
    except OSError:
        return []
