"""The chaos invariants: what must hold on a node running dracpu, checked against the real system.

Used by the fast chaos test (``tests/reliability/test_chaos.py``: the real daemon, grpcio as the
kubelet, the Go NRI peer as the runtime), by ``just chaos`` on the rig (``bench/chaos.py``) and
by the churn bench. The interface is small:

- :class:`Observed` is one look at the node: the checkpoint, the CDI dir, the daemon's status
  document, every container (what its env claims and what it runs on), and, when known, the
  API's claims and slices. The ``read_*`` helpers fill it from files; callers add containers
  from wherever they come from (``/proc/<pid>/status`` on the rig, the NRI peer in tests).
- :func:`check` returns the violations, one line each (empty: all hold).

The invariants (each violation's line starts with its tag):

- ``two-claims``: no CPU is held by two claims (checkpoint and daemon state);
- ``exclusive``: a container whose env names claims (``DRA_CPUSET_<uid>=<cpus>``) runs on
  exactly the union of those claims' CPUs, each claim is prepared and its env value matches;
- ``shared``: every other container runs on a non-empty set off every exclusive CPU;
- ``cdi``: the CDI dir holds exactly one spec per prepared claim, with its CPUs (no orphan);
- ``leak``: once no pod is left (``quiescent``), no claim is prepared and the shared pool is all
  online CPUs;
- ``slices``: the node's published devices are exactly the expected ones, each in one slice,
  all slices of one pool generation;
- ``checkpoint``: the checkpoint equals the running daemon's claims, and each prepared claim
  matches its allocation in the API (allocated to this node, its devices, its CPU count).

Pure: nothing here does I/O except the ``read_*`` helpers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from dracpu.cdi import CdiDir
from dracpu.checkpoint import CheckpointStore
from dracpu.core.cpuset import CpuSet

ENV_PREFIX = "DRA_CPUSET_"
DRIVER = "dra.cpu"
CAPACITY = "dra.cpu/cpu"


@dataclass(frozen=True)
class Container:
    """One running container: ``ref`` names it in messages; ``env`` is its environment (only
    ``DRA_CPUSET_*`` entries matter); ``cpus`` is what it runs on (its affinity or cgroup)."""

    ref: str
    env: Mapping[str, str]
    cpus: CpuSet

    def claims(self) -> dict[str, str]:
        """Claim UID -> the CPU list its env entry gives."""
        return {k[len(ENV_PREFIX) :]: v for k, v in self.env.items() if k.startswith(ENV_PREFIX)}


@dataclass(frozen=True)
class Observed:
    """One look at the node. ``None`` means "not observed" and skips the checks needing it.

    ``expected_devices`` maps each device the node should publish to its CPUs (see
    :func:`expected_devices`); ``api_claims`` maps claim UID -> the ResourceClaim object for
    every claim of the API (any node); ``quiescent`` says no pod with containers is left.
    """

    online: CpuSet
    checkpoint: Mapping[str, CpuSet] | None
    cdi: Mapping[str, CpuSet | None] | None
    status: Mapping[str, Any] | None = None
    containers: Sequence[Container] = ()
    node: str = ""
    api_claims: Mapping[str, Mapping[str, Any]] | None = None
    slices: Sequence[Mapping[str, Any]] | None = None
    expected_devices: Mapping[str, CpuSet] | None = None
    quiescent: bool = False


def check(obs: Observed) -> list[str]:
    """Every violation in ``obs``, one line each, in a stable order."""
    out: list[str] = []
    held = obs.checkpoint
    if held is not None:
        out += _disjoint("checkpoint", held)
    running = status_claims(obs.status) if obs.status is not None else None
    if running is not None:
        out += _disjoint("daemon", running)
        if held is not None and running != held:
            out.append(f"checkpoint: on disk {_fmt(held)} but the daemon holds {_fmt(running)}")
    claims = running if running is not None else held
    if claims is not None:
        out += _containers(obs, claims)
        if obs.cdi is not None:
            out += _cdi(obs.cdi, claims)
        if obs.api_claims is not None:
            out += _api(obs, claims)
        if obs.quiescent:
            if claims:
                out.append(f"leak: no pod is left but claims are prepared: {_fmt(claims)}")
            if obs.status is not None:
                pool = CpuSet.parse(str(obs.status.get("sharedPool", "")))
                if pool != obs.online:
                    out.append(
                        f"leak: no pod is left but the shared pool is {pool or 'empty'}, "
                        f"not all online CPUs {obs.online}"
                    )
    if obs.slices is not None and obs.expected_devices is not None:
        out += _slices(obs.slices, obs.expected_devices, obs.node)
    return out


def _fmt(claims: Mapping[str, CpuSet]) -> str:
    return "{" + ", ".join(f"{u}: {c}" for u, c in sorted(claims.items())) + "}"


def _disjoint(where: str, claims: Mapping[str, CpuSet]) -> list[str]:
    out = []
    owner: dict[int, str] = {}
    for uid, cpus in sorted(claims.items()):
        for cpu in cpus:
            if cpu in owner:
                out.append(f"two-claims: CPU {cpu} is held by {owner[cpu]} and {uid} ({where})")
            else:
                owner[cpu] = uid
    return out


def _containers(obs: Observed, claims: Mapping[str, CpuSet]) -> list[str]:
    out = []
    exclusive = CpuSet.of(cpu for cpus in claims.values() for cpu in cpus)
    for c in obs.containers:
        named = c.claims()
        if not named:
            if not c.cpus:
                out.append(f"shared: {c.ref} runs on no CPU")
            elif not c.cpus.isdisjoint(exclusive):
                out.append(
                    f"shared: {c.ref} runs on {c.cpus}, which overlaps exclusive CPUs "
                    f"{c.cpus & exclusive}"
                )
            continue
        want = CpuSet()
        for uid, value in sorted(named.items()):
            if uid not in claims:
                out.append(f"exclusive: {c.ref} names claim {uid}, which is not prepared")
                continue
            if _parse(value) != claims[uid]:
                out.append(f"exclusive: {c.ref} env says {uid}={value}, prepared {claims[uid]}")
            want = want | claims[uid]
        if want and c.cpus != want:
            out.append(f"exclusive: {c.ref} runs on {c.cpus}, its claims hold {want}")
    return out


def _parse(value: str) -> CpuSet | None:
    try:
        return CpuSet.parse(value)
    except ValueError:
        return None


def _cdi(cdi: Mapping[str, CpuSet | None], claims: Mapping[str, CpuSet]) -> list[str]:
    out = []
    for uid, cpus in sorted(cdi.items()):
        if uid not in claims:
            out.append(f"cdi: orphan spec for claim {uid} ({cpus}), which is not prepared")
        elif cpus != claims[uid]:
            out.append(f"cdi: spec of {uid} gives {cpus}, the claim holds {claims[uid]}")
    for uid in sorted(set(claims) - set(cdi)):
        out.append(f"cdi: claim {uid} is prepared but has no spec")
    return out


def _api(obs: Observed, claims: Mapping[str, CpuSet]) -> list[str]:
    assert obs.api_claims is not None
    out = []
    devices = {} if obs.status is None else status_devices(obs.status)
    for uid, cpus in sorted(claims.items()):
        api = obs.api_claims.get(uid)
        if api is None:
            out.append(f"checkpoint: claim {uid} ({cpus}) is prepared but gone from the API")
            continue
        results = [
            r
            for r in (api.get("status", {}).get("allocation") or {})
            .get("devices", {})
            .get("results", [])
            if r.get("driver") == DRIVER
        ]
        ref = f"{api['metadata'].get('namespace', '')}/{api['metadata'].get('name', '')}"
        if not results:
            out.append(f"checkpoint: claim {uid} ({ref}) is prepared but not allocated")
            continue
        if obs.node and any(r.get("pool") != obs.node for r in results):
            out.append(f"checkpoint: claim {uid} ({ref}) is allocated to another pool")
        if obs.expected_devices is None:
            continue
        allowed = CpuSet()
        count = Fraction(0)
        for r in results:
            allowed = allowed | obs.expected_devices.get(str(r.get("device")), CpuSet())
            quantity = (r.get("consumedCapacity") or {}).get(CAPACITY)
            count += Fraction(str(quantity)) if quantity is not None else 1
        if not cpus <= allowed:
            out.append(f"checkpoint: claim {uid} holds {cpus}, outside its devices' {allowed}")
        if len(cpus) != count:
            out.append(f"checkpoint: claim {uid} holds {len(cpus)} CPUs, allocated {count}")
        if uid in devices and devices[uid] != {str(r.get("device")) for r in results}:
            out.append(
                f"checkpoint: claim {uid} prepared on devices {sorted(devices[uid])}, "
                f"allocated {sorted(str(r.get('device')) for r in results)}"
            )
    return out


def _slices(
    slices: Sequence[Mapping[str, Any]], expected: Mapping[str, CpuSet], node: str
) -> list[str]:
    out = []
    mine = [
        s
        for s in slices
        if s.get("spec", {}).get("driver") == DRIVER and s.get("spec", {}).get("nodeName") == node
    ]
    seen: dict[str, str] = {}
    generations = set()
    for s in mine:
        name = s["metadata"]["name"]
        pool = s["spec"].get("pool", {})
        generations.add(pool.get("generation"))
        if pool.get("name") != node:
            out.append(f"slices: {name} is in pool {pool.get('name')!r}, not {node!r}")
        count = pool.get("resourceSliceCount")
        if count != len(mine):
            out.append(f"slices: {name} says {count} slice(s) in the pool, there are {len(mine)}")
        for d in s["spec"].get("devices", []):
            if d["name"] in seen:
                out.append(f"slices: device {d['name']} is in {seen[d['name']]} and {name}")
            seen[d["name"]] = name
    if len(generations) > 1:
        out.append(f"slices: the pool has slices of generations {sorted(generations)}")
    if set(seen) != set(expected):
        missing = sorted(set(expected) - set(seen))
        extra = sorted(set(seen) - set(expected))
        out.append(f"slices: devices missing {missing}, unexpected {extra}")
    return out


# ------------------------------------------------------------------------ readers (I/O)
def read_checkpoint(state_dir: Path) -> dict[str, CpuSet] | None:
    """Claim UID -> CPUs of the checkpoint on disk (as a restart would load it); None if there
    is no loadable checkpoint."""
    loaded = CheckpointStore(state_dir).load()
    if loaded.body is None:
        return None
    return {c["uid"]: CpuSet.parse(c["cpus"]) for c in loaded.body["claims"]}


def read_cdi(cdi_dir: Path) -> dict[str, CpuSet | None]:
    """Claim UID -> CPUs of every dracpu CPU spec in ``cdi_dir``."""
    return CdiDir(cdi_dir).read_all()


def status_claims(status: Mapping[str, Any]) -> dict[str, CpuSet]:
    """Claim UID -> CPUs from a daemon status document (``/status`` or ``dracpu status``)."""
    return {c["uid"]: CpuSet.parse(c["cpus"]) for c in status.get("claims", [])}


def status_devices(status: Mapping[str, Any]) -> dict[str, set[str]]:
    """Claim UID -> the device names it was prepared on (claims adopted without devices are
    left out)."""
    return {
        c["uid"]: {d["device"] for d in c["devices"]}
        for c in status.get("claims", [])
        if c.get("devices")
    }


def expected_devices(topology: Any, *, node: str, mode: str, group_by: str) -> dict[str, CpuSet]:
    """Device name -> CPUs the node should publish (dracpu's own device model, nothing
    reserved)."""
    from dracpu.core.slices import DeviceMode, GroupBy, SliceOptions, cpu_devices

    options = SliceOptions(node_name=node, mode=DeviceMode(mode), group_by=GroupBy(group_by))
    return {d.name: d.cpus for d in cpu_devices(topology, options)}


def proc_container(pid: int, ref: str) -> Container | None:
    """A container from its process ``pid`` on the host: the env of ``/proc/<pid>/environ`` and
    the ``Cpus_allowed_list`` of ``/proc/<pid>/status``; None if the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    fields = dict(ln.split(":\t", 1) for ln in status.splitlines() if ":\t" in ln)
    env = dict(e.decode(errors="replace").split("=", 1) for e in raw.split(b"\0") if b"=" in e)
    return Container(ref, env, CpuSet.parse(fields["Cpus_allowed_list"].strip()))


def dumps(obs: Observed) -> str:
    """``obs`` as one JSON line (for a failing run's log)."""
    return json.dumps(
        {
            "checkpoint": {u: str(c) for u, c in (obs.checkpoint or {}).items()},
            "cdi": {u: str(c) for u, c in (obs.cdi or {}).items()},
            "containers": [{"ref": c.ref, "cpus": str(c.cpus)} for c in obs.containers],
        }
    )
