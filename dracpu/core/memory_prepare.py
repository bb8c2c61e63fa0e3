"""Prepare ``dra.memory`` claims: allocation results → per-claim memory assignment + CDI env.

Pure and self-contained over plain dataclasses, so the node state machine can call it inside a
transition and checkpoint the result:

- :func:`prepare_memory` takes one claim's allocation results for ``dra.memory`` (device and
  consumed ``size``), the node's published devices and the assignments already held, and returns
  the claim's :class:`MemoryAssignment` or raises :class:`MemoryClaimError` naming the claim and
  the bad value. The NUMA node of each grant is the chosen device's node; the amount is the
  consumed capacity, which must be a whole number of pages of the device's page size.
- :func:`prepare_memory_claims` does a batch, threading holdings through, so two claims of one
  batch cannot together over-commit a device. Errors are per claim.
- :func:`memory_env` renders the CDI env in upstream's format::

      DRAMEMORY_<claimUID>_<resource>=numanode:<N>,size:<quantity>
      DRAMEMORY_<claimUID>_NUMANodes=<N>[,<N>...]

  ``<resource>`` is ``memory`` or ``hugepages_2Mi`` (upstream's name with ``-`` → ``_``), and the
  quantity is the canonical BinarySI form (``256Mi``). Upstream has one variable per resource, so
  a claim holding one resource on several NUMA nodes cannot be expressed there; dracpu then
  writes one variable per node, ``..._<resource>_numa<N>``, which upstream's parser skips.

Over-request means more bytes on a device than it has, counting every other held claim: the
scheduler should never allocate that, but a restart with fewer hugepages (the kernel gave fewer),
or a stale allocation, can; the claim fails instead of over-committing the node.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dracpu.core.memory import MemoryKind, MemoryResource
from dracpu.core.memory_slices import SIZE_CAPACITY, MemoryDevice
from dracpu.core.quantity import format_bytes, parse_bytes
from dracpu.errors import InvalidValueError

__all__ = [
    "CDI_CLASS",
    "CDI_KIND",
    "CDI_VENDOR",
    "ENV_PREFIX",
    "AllocatedMemory",
    "MemoryAssignment",
    "MemoryClaimError",
    "MemoryGrant",
    "adopt_memory",
    "assignment_from_json",
    "assignment_to_json",
    "cdi_device_id",
    "cdi_device_name",
    "memory_env",
    "prepare_memory",
    "prepare_memory_claims",
    "results_from_env",
]

ENV_PREFIX = "DRAMEMORY"
CDI_VENDOR = "dra.k8s.io"
CDI_CLASS = "memory"
CDI_KIND = f"{CDI_VENDOR}/{CDI_CLASS}"
_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")


class MemoryClaimError(InvalidValueError):
    """A ``dra.memory`` claim cannot be prepared; the message names the claim and the value."""

    def __init__(self, claim_uid: str, message: str, *, value: object = None) -> None:
        self.claim_uid = claim_uid
        super().__init__(message, value=value, origin=f"claim {claim_uid}")


@dataclass(frozen=True, slots=True)
class AllocatedMemory:
    """One allocation result of a claim for driver ``dra.memory``, as the API states it."""

    request: str
    pool: str
    device: str
    consumed: Mapping[str, str] = field(default_factory=dict)
    """``consumedCapacity``: capacity name → quantity text (``{"size": "256Mi"}``)."""


@dataclass(frozen=True, slots=True)
class MemoryGrant:
    """Bytes of one resource on one NUMA node, granted to one request of a claim."""

    request: str
    device: str
    resource: MemoryResource
    numa: int
    size: int

    @property
    def pages(self) -> int:
        """The grant in pages of its page size."""
        return self.size // self.resource.page_size


@dataclass(frozen=True, slots=True)
class MemoryAssignment:
    """What a prepared claim holds; what the checkpoint stores and enforcement reads."""

    claim_uid: str
    grants: tuple[MemoryGrant, ...] = ()
    adopted: bool = False
    """Rebuilt from the claim's CDI spec after a lost checkpoint: the request names are not
    known (empty) until the kubelet prepares the claim again (:func:`adopt_memory`)."""

    @property
    def numa_nodes(self) -> tuple[int, ...]:
        """The NUMA nodes of every grant, sorted: the container's ``cpuset.mems``."""
        return tuple(sorted({g.numa for g in self.grants}))

    @property
    def memory_bytes(self) -> dict[int, int]:
        """Ordinary memory bytes per NUMA node."""
        return _sum((g.numa, g.size) for g in self.grants if not g.resource.hugetlb)

    @property
    def hugepages(self) -> dict[int, dict[int, int]]:
        """Hugepage counts: page size → NUMA node → pages."""
        out: dict[int, dict[int, int]] = {}
        for g in self.grants:
            if g.resource.hugetlb:
                per_node = out.setdefault(g.resource.page_size, {})
                per_node[g.numa] = per_node.get(g.numa, 0) + g.pages
        return {size: dict(sorted(nodes.items())) for size, nodes in sorted(out.items())}

    @property
    def hugepage_limits(self) -> dict[int, int]:
        """Bytes per hugepage size, all nodes together: the container's hugetlb limits."""
        return _sum((g.resource.page_size, g.size) for g in self.grants if g.resource.hugetlb)

    def bytes_on(self, device: str) -> int:
        """Bytes this claim holds on ``device``."""
        return sum(g.size for g in self.grants if g.device == device)


def prepare_memory(
    claim_uid: str,
    results: Sequence[AllocatedMemory],
    devices: Iterable[MemoryDevice],
    holdings: Mapping[str, MemoryAssignment],
    *,
    pool: str,
) -> MemoryAssignment:
    """The assignment for one claim; raises :class:`MemoryClaimError` on a bad result.

    ``devices`` are the node's published devices (:func:`memory_devices`), ``pool`` the pool
    they are published in, ``holdings`` the prepared claims by UID. Preparing a claim again with
    the same results returns what it holds (idempotent); with different results it is an error.
    """
    if not _UID.fullmatch(claim_uid):
        raise MemoryClaimError(claim_uid, f"claim UID {claim_uid!r} is not env-safe")
    by_name = {d.name: d for d in devices}
    grants: list[MemoryGrant] = []
    for result in results:
        where = f"request {result.request!r} device {result.device!r}"
        if result.pool != pool:
            raise MemoryClaimError(
                claim_uid,
                f"{where}: allocated from pool {result.pool!r}, this node publishes {pool!r}",
                value=result.pool,
            )
        device = by_name.get(result.device)
        if device is None:
            raise MemoryClaimError(
                claim_uid,
                f"{where}: not a device of this node (known: {', '.join(sorted(by_name))})",
                value=result.device,
            )
        text = result.consumed.get(SIZE_CAPACITY)
        if text is None:
            raise MemoryClaimError(
                claim_uid,
                f"{where}: no consumed capacity {SIZE_CAPACITY!r} "
                f"(consumed: {sorted(result.consumed) or 'none'})",
            )
        try:
            size = parse_bytes(text)
        except InvalidValueError as exc:
            raise MemoryClaimError(claim_uid, f"{where}: {exc}", value=text) from exc
        page = device.resource.page_size
        if size == 0:
            raise MemoryClaimError(claim_uid, f"{where}: consumed size {text!r} is 0", value=text)
        if size % page:
            raise MemoryClaimError(
                claim_uid,
                f"{where}: consumed size {text!r} is not a whole number of "
                f"{device.resource.page_size_string} pages",
                value=text,
            )
        grants.append(MemoryGrant(result.request, device.name, device.resource, device.numa, size))
    assignment = MemoryAssignment(claim_uid, tuple(grants))
    held = holdings.get(claim_uid)
    if held is not None:
        if held == assignment:
            return held
        if held.adopted and _amounts(held) == _amounts(assignment):
            return assignment  # The kubelet names the requests of a claim rebuilt from CDI.
        raise MemoryClaimError(claim_uid, "already prepared with a different allocation")
    for device in by_name.values():
        asked = assignment.bytes_on(device.name)
        if not asked:
            continue
        others = sum(a.bytes_on(device.name) for uid, a in holdings.items() if uid != claim_uid)
        if others + asked > device.capacity:
            raise MemoryClaimError(
                claim_uid,
                f"over-request on device {device.name!r} (NUMA node {device.numa}): asks "
                f"{format_bytes(asked)}, other claims hold {format_bytes(others)}, "
                f"capacity {format_bytes(device.capacity)}",
                value=asked,
            )
    return assignment


def _amounts(assignment: MemoryAssignment) -> list[tuple[str, int, int, int]]:
    """The grants without their request names, in a canonical order."""
    return sorted((g.device, g.resource.page_size, g.numa, g.size) for g in assignment.grants)


def prepare_memory_claims(
    claims: Mapping[str, Sequence[AllocatedMemory]],
    devices: Sequence[MemoryDevice],
    holdings: Mapping[str, MemoryAssignment],
    *,
    pool: str,
) -> dict[str, MemoryAssignment | MemoryClaimError]:
    """Prepare claims in order (UID → results); each later claim sees the earlier ones held."""
    held = dict(holdings)
    out: dict[str, MemoryAssignment | MemoryClaimError] = {}
    for uid, results in claims.items():
        try:
            assignment = prepare_memory(uid, results, devices, held, pool=pool)
        except MemoryClaimError as exc:
            out[uid] = exc
        else:
            held[uid] = assignment
            out[uid] = assignment
    return out


def cdi_device_name(claim_uid: str) -> str:
    """The claim's CDI device name, as upstream: ``claim-<uid>``."""
    return f"claim-{claim_uid}"


def cdi_device_id(claim_uid: str) -> str:
    """The fully qualified CDI device ID: ``dra.k8s.io/memory=claim-<uid>``."""
    return f"{CDI_KIND}={cdi_device_name(claim_uid)}"


def memory_env(assignment: MemoryAssignment) -> list[str]:
    """The CDI env of a prepared claim, in upstream's ``DRAMEMORY_*`` format (module docs)."""
    if not assignment.grants:
        return []
    uid = assignment.claim_uid
    per: dict[MemoryResource, dict[int, int]] = {}
    for g in assignment.grants:
        nodes = per.setdefault(g.resource, {})
        nodes[g.numa] = nodes.get(g.numa, 0) + g.size
    env: list[str] = []
    for resource in sorted(per, key=lambda r: r.sort_key):
        key = f"{ENV_PREFIX}_{uid}_{resource.name.replace('-', '_')}"
        nodes = per[resource]
        for numa, size in sorted(nodes.items()):
            suffix = f"_numa{numa}" if len(nodes) > 1 else ""
            env.append(f"{key}{suffix}=numanode:{numa},size:{format_bytes(size)}")
    numa_list = ",".join(str(n) for n in assignment.numa_nodes)
    env.append(f"{ENV_PREFIX}_{uid}_NUMANodes={numa_list}")
    return env


def assignment_to_json(assignment: MemoryAssignment) -> dict[str, Any]:
    """A JSON-ready form of an assignment, for the checkpoint (:func:`assignment_from_json`)."""
    return {
        "claimUID": assignment.claim_uid,
        **({"adopted": True} if assignment.adopted else {}),
        "grants": [
            {
                "request": g.request,
                "device": g.device,
                "kind": str(g.resource.kind),
                "pageSize": g.resource.page_size,
                "numaNode": g.numa,
                "size": g.size,
            }
            for g in assignment.grants
        ],
    }


def assignment_from_json(doc: object, *, origin: str) -> MemoryAssignment:
    """Read :func:`assignment_to_json`'s form back; ``InvalidValueError`` names the bad field."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("claimUID"), str):
        raise InvalidValueError("not a memory assignment (no claimUID)", value=doc, origin=origin)
    grants_doc = doc.get("grants", [])
    if not isinstance(grants_doc, list):
        raise InvalidValueError("grants is not a list", value=grants_doc, origin=origin)
    grants = []
    for i, g in enumerate(grants_doc):
        where = f"{origin}: grants[{i}]"
        if not isinstance(g, Mapping):
            raise InvalidValueError("not a mapping", value=g, origin=where)
        try:
            kind = MemoryKind(str(g.get("kind")))
        except ValueError:
            raise InvalidValueError(
                f"kind {g.get('kind')!r} is not memory or hugepages", value=g, origin=where
            ) from None
        fields = {k: g.get(k) for k in ("pageSize", "numaNode", "size")}
        for key, value in fields.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidValueError(f"{key} {value!r} is not a count", value=g, origin=where)
        texts = {k: g.get(k) for k in ("request", "device")}
        for key, value in texts.items():
            if not isinstance(value, str):
                raise InvalidValueError(f"{key} {value!r} is not a string", value=g, origin=where)
        grants.append(
            MemoryGrant(
                request=str(texts["request"]),
                device=str(texts["device"]),
                resource=MemoryResource(kind, int(g["pageSize"])),
                numa=int(g["numaNode"]),
                size=int(g["size"]),
            )
        )
    adopted = doc.get("adopted", False)
    if not isinstance(adopted, bool):
        raise InvalidValueError(f"adopted {adopted!r} is not a boolean", value=doc, origin=origin)
    return MemoryAssignment(doc["claimUID"], tuple(grants), adopted=adopted)


def results_from_env(
    claim_uid: str, env: Sequence[str], devices: Iterable[MemoryDevice], *, pool: str, origin: str
) -> tuple[AllocatedMemory, ...]:
    """The allocation results a claim's ``DRAMEMORY_*`` env (:func:`memory_env`) stands for,
    with empty request names; raises :class:`InvalidValueError` naming the entry that does not
    parse or names no device of this node, or when the env is not exactly what
    :func:`memory_env` would write for them (a foreign or hand-edited spec)."""
    head = f"{ENV_PREFIX}_{claim_uid}_"
    by_key = {(d.resource.name.replace("-", "_"), d.numa): d for d in devices}
    results: list[AllocatedMemory] = []
    for entry in env:
        name, sep, value = entry.partition("=")
        if not sep or not name.startswith(head):
            raise InvalidValueError(
                "not a DRAMEMORY variable of the claim", value=entry, origin=origin
            )
        key = name[len(head) :]
        if key == "NUMANodes":
            continue
        fields = dict(p.partition(":")[::2] for p in value.split(","))
        numa_text, size = fields.get("numanode", ""), fields.get("size", "")
        if not numa_text.isdigit() or not size or set(fields) != {"numanode", "size"}:
            raise InvalidValueError("want numanode:<N>,size:<quantity>", value=entry, origin=origin)
        resource = re.sub(r"_numa[0-9]+$", "", key)
        device = by_key.get((resource, int(numa_text)))
        if device is None:
            raise InvalidValueError(
                f"no {resource} device on NUMA node {numa_text} here", value=entry, origin=origin
            )
        results.append(AllocatedMemory("", pool, device.name, {SIZE_CAPACITY: size}))
    return tuple(results)


def adopt_memory(
    specs: Mapping[str, Sequence[str] | None],
    devices: Sequence[MemoryDevice],
    *,
    pool: str,
    origin: str = "CDI spec",
) -> tuple[dict[str, MemoryAssignment], dict[str, str]]:
    """Rebuild memory assignments from the claims' CDI env (claim UID → env, None when the spec
    was unreadable), as after a lost checkpoint: every spec goes through :func:`prepare_memory`,
    so bad quantities and over-requests between the rebuilt claims are refused as at prepare,
    and must give back the same env. Returns (adopted assignments, UID → why a spec was not
    adopted); never raises on bad input."""
    held: dict[str, MemoryAssignment] = {}
    skipped: dict[str, str] = {}
    for uid, env in sorted(specs.items()):
        where = f"{origin} of memory claim {uid}"
        if env is None:
            skipped[uid] = f"{where}: unreadable"
            continue
        try:
            results = results_from_env(uid, env, devices, pool=pool, origin=where)
            assignment = prepare_memory(uid, results, devices, held, pool=pool)
        except InvalidValueError as exc:
            skipped[uid] = str(exc)
            continue
        if not assignment.grants or memory_env(assignment) != list(env):
            skipped[uid] = f"{where}: env {list(env)} is not what this claim would have"
            continue
        held[uid] = dataclasses.replace(assignment, adopted=True)
    return held, skipped


def _sum(pairs: Iterable[tuple[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for key, value in pairs:
        out[key] = out.get(key, 0) + value
    return dict(sorted(out.items()))
