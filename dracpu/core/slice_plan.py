"""Pure planning for ResourceSlice publishing: desired specs + existing slices → writes.

No I/O here (no trio, httpx, os): the publisher (:mod:`dracpu.kube.publisher`) feeds in what the
API server holds and executes the :class:`SlicePlan` this module returns.

Rules (facts from the API and the upstream Go helper; the code is ours):

* A pool's slices all carry the same ``pool.generation`` and ``pool.resourceSliceCount`` (the
  number of slices). Consumers only trust the highest generation and treat a pool as incomplete
  until they saw ``resourceSliceCount`` slices of it.
* Existing slices are matched to desired slice *i* by the hex index that starts their name
  (``generateName = "<index, ≥5 hex digits>-<driver>-<node>-"``, the 1.36 helper's scheme, so
  slices written by the Go driver are adopted rather than duplicated). Slices with an older
  generation, an unparsable or out-of-range index, a duplicate index, or a foreign pool name are
  obsolete and deleted.
* If anything must be written (a missing slice, different content, wrong pool fields, missing
  owner reference or label), the generation is bumped by one over the highest ever seen
  (``min_generation`` carries it across a wipe) and every slice is rewritten with it; if nothing
  must be written, nothing is, whatever else happens (only obsolete slices are deleted).
* Content is compared semantically: empty/absent/null are equal (JSON ``omitempty``), optional
  ``false`` flags equal absent ones, and quantities under ``capacity``/``counters`` compare by
  value (``"1000m" == "1"``).
* When the server stored less than was sent (a feature gate is off), :func:`compare_content`
  names the dropped fields and :func:`missing_gates` the gates; the caller records a
  :class:`StoredForm` so the same desired content is then compared with what the server can
  store, instead of rewriting it forever.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from dracpu.core import quantity
from dracpu.errors import InvalidValueError

__all__ = [
    "FIELD_GATES",
    "Quantity",
    "SliceDelete",
    "SlicePlan",
    "SliceWrite",
    "StoredForm",
    "check_desired",
    "compare_content",
    "content",
    "decode_index",
    "generate_name",
    "index_width",
    "missing_gates",
    "normalize",
    "parse_quantity",
    "plan_slices",
]

API_VERSION = "resource.k8s.io/v1"

#: Which feature gate a field needs; the API server drops the field when the gate is off.
FIELD_GATES: Mapping[str, str] = {
    "allowMultipleAllocations": "DRAConsumableCapacity",
    "requestPolicy": "DRAConsumableCapacity",
    "taints": "DRADeviceTaints",
    "sharedCounters": "DRAPartitionableDevices",
    "consumesCounters": "DRAPartitionableDevices",
    "perDeviceNodeSelection": "DRAPartitionableDevices",
    "bindsToNode": "DRADeviceBindingConditions",
    "bindingConditions": "DRADeviceBindingConditions",
    "bindingFailureConditions": "DRADeviceBindingConditions",
    "ints": "DRAListTypeAttributes",
    "bools": "DRAListTypeAttributes",
    "strings": "DRAListTypeAttributes",
    "versions": "DRAListTypeAttributes",
    "nodeAllocatableResourceMappings": "DRANodeAllocatableResources",  # 1.36 name
    "nodeAllocatableResources": "DRANodeAllocatableResources",  # 1.37 name
    "compatibilityGroups": "DRADeviceCompatibilityGroups",  # 1.37
    "partitionTypeAttribute": "DRAPartitionableDevicesType",  # 1.37
    "skipNodeOperations": "DRAOptionalNodeOperations",  # 1.37
}
_DEVICE_PLACEMENT = frozenset({"nodeName", "nodeSelector", "allNodes"})
_OPTIONAL_TRUE = frozenset(
    {"allowMultipleAllocations", "allNodes", "perDeviceNodeSelection", "bindsToNode"}
)
_QUANTITY_SCOPES = frozenset({"capacity", "counters"})


@dataclass(frozen=True, slots=True)
class Quantity:
    """A parsed resource quantity (exact rational value) for semantic comparison."""

    value: Fraction


def parse_quantity(text: str) -> Fraction | None:
    """Value of a Kubernetes quantity string (``"500m"``, ``"1Gi"``, ``"1e3"``); None if invalid."""
    try:
        return quantity.parse_quantity(text)
    except InvalidValueError:
        return None


def normalize(value: Any, *, key: str = "", in_quantity: bool = False) -> Any:
    """A comparable form of a JSON value: omitempty semantics and quantities by value."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if k in _OPTIONAL_TRUE and v is False:
                continue
            n = normalize(v, key=k, in_quantity=in_quantity or k in _QUANTITY_SCOPES)
            if n is None or n == {} or n == []:
                continue
            out[k] = n
        return out
    if isinstance(value, list | tuple):
        return [normalize(v, key=key, in_quantity=in_quantity) for v in value]
    if in_quantity and isinstance(value, str):
        q = parse_quantity(value)
        return Quantity(q) if q is not None else value
    return value


def content(spec: Mapping[str, Any]) -> Any:
    """The normalized slice spec without ``pool`` (which the publisher owns)."""
    return normalize({k: v for k, v in spec.items() if k != "pool"})


def compare_content(sent: Any, stored: Any) -> tuple[list[str], list[str]]:
    """Paths present in ``sent`` but absent in ``stored`` (dropped), and paths that differ.

    Both arguments are normalized values (see :func:`content`). Paths use ``a.b[3].c`` syntax.
    """
    dropped: list[str] = []
    changed: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k, v in a.items():
                sub = f"{path}.{k}" if path else k
                if k not in b:
                    dropped.append(sub)
                else:
                    walk(v, b[k], sub)
            for k in b:
                if k not in a:
                    changed.append(f"{path}.{k}" if path else k)
        elif isinstance(a, list) and isinstance(b, list):
            for i, v in enumerate(a):
                if i >= len(b):
                    dropped.append(f"{path}[{i}]")
                else:
                    walk(v, b[i], f"{path}[{i}]")
            if len(b) > len(a):
                changed.append(f"{path}[{len(a)}]")
        elif a != b:
            changed.append(path)

    walk(sent, stored, "")
    return dropped, changed


def missing_gates(dropped: Iterable[str]) -> list[str]:
    """The feature gates whose absence explains the ``dropped`` paths (sorted, unique)."""
    gates: set[str] = set()
    for path in dropped:
        parts = [p for p in re.split(r"[.\[\]]", path) if p and not p.isdigit()]
        for part in parts:
            if part in FIELD_GATES:
                gates.add(FIELD_GATES[part])
                break
        else:
            if len(parts) >= 2 and parts[0] == "devices" and parts[1] in _DEVICE_PLACEMENT:
                gates.add("DRAPartitionableDevices")
    return sorted(gates)


def index_width(count: int) -> int:
    """Hex digits of the index prefix in slice names: at least 5."""
    return max(5, len(f"{max(count - 1, 0):x}"))


def generate_name(index: int, count: int, driver: str, node: str) -> str:
    """``generateName`` for slice ``index`` of ``count``: ``<hex index>-<driver>-<node>-``."""
    return f"{index:0{index_width(count)}x}-{driver}-{node}-"


def decode_index(name: str, count: int) -> int | None:
    """The slice index encoded at the start of ``name``, or None if it has none."""
    width = index_width(count)
    if name.find("-") != width:
        return None
    try:
        return int(name[:width], 16)
    except ValueError:
        return None


def check_desired(specs: Sequence[Mapping[str, Any]], *, driver: str, node: str) -> str:
    """Validate desired specs for this driver and node; returns the pool name.

    Raises :class:`InvalidValueError` naming the slice index and field on a mismatch.
    """
    pool_name = node
    for i, spec in enumerate(specs):
        origin = f"desired ResourceSlice spec #{i}"
        if not isinstance(spec, Mapping):
            raise InvalidValueError("not a mapping", value=spec, origin=origin)
        if spec.get("driver") != driver:
            raise InvalidValueError(
                f"spec.driver must be {driver!r}", value=spec.get("driver"), origin=origin
            )
        if spec.get("nodeName") != node:
            raise InvalidValueError(
                f"spec.nodeName must be {node!r}", value=spec.get("nodeName"), origin=origin
            )
        pool = spec.get("pool")
        name = pool.get("name") if isinstance(pool, Mapping) else None
        if not isinstance(name, str) or not name:
            raise InvalidValueError("spec.pool.name missing", value=pool, origin=origin)
        if i == 0:
            pool_name = name
        elif name != pool_name:
            raise InvalidValueError(
                f"all slices must share pool {pool_name!r}", value=name, origin=origin
            )
    return pool_name


@dataclass(frozen=True, slots=True)
class StoredForm:
    """What the server stored (``stored``) when sent the normalized content ``sent``."""

    sent: Any
    stored: Any


@dataclass(frozen=True, slots=True)
class SliceWrite:
    """A create (``body`` has generateName) or update (``body`` has name+resourceVersion)."""

    index: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SliceDelete:
    """Delete ``name`` if it still has this uid and resourceVersion."""

    name: str
    uid: str
    resource_version: str


@dataclass(frozen=True, slots=True)
class SlicePlan:
    """The writes that make the API server equal to the desired slices."""

    generation: int
    deletes: tuple[SliceDelete, ...] = ()
    updates: tuple[SliceWrite, ...] = ()
    creates: tuple[SliceWrite, ...] = ()
    reasons: tuple[str, ...] = field(default=(), compare=False)

    @property
    def empty(self) -> bool:
        """True when nothing needs writing."""
        return not (self.deletes or self.updates or self.creates)

    @property
    def writes(self) -> int:
        """Number of write calls the plan needs."""
        return len(self.deletes) + len(self.updates) + len(self.creates)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _generation(obj: Mapping[str, Any]) -> int:
    pool = _spec(obj).get("pool")
    gen = pool.get("generation") if isinstance(pool, Mapping) else None
    return gen if isinstance(gen, int) and not isinstance(gen, bool) else 0


def _owner_ref(node: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid, "controller": True}


def _has_owner(obj: Mapping[str, Any], node: str, uid: str) -> bool:
    refs = _meta(obj).get("ownerReferences") or []
    return any(
        isinstance(r, Mapping)
        and r.get("kind") == "Node"
        and r.get("name") == node
        and r.get("uid") == uid
        and r.get("controller") is True
        for r in refs
    )


def plan_slices(
    desired: Sequence[Mapping[str, Any]],
    existing: Iterable[Mapping[str, Any]],
    *,
    driver: str,
    node: str,
    owner_uid: str | None = None,
    labels: Mapping[str, str] | None = None,
    min_generation: int = 0,
    stored_forms: Mapping[int, StoredForm] | None = None,
) -> SlicePlan:
    """Plan the writes turning ``existing`` slices into ``desired`` (see the module rules).

    ``desired`` are spec dicts (driver, nodeName, pool.name, devices, ...); their
    ``pool.generation``/``resourceSliceCount`` are ignored and set here. ``existing`` are the
    slices the server holds for this node and driver. ``owner_uid`` (the Node's UID) adds a
    controller owner reference. Raises :class:`InvalidValueError` on bad desired specs.
    """
    pool_name = check_desired(desired, driver=driver, node=node)
    labels = dict(labels or {})
    stored_forms = stored_forms or {}
    count = len(desired)
    existing = sorted(existing, key=lambda o: str(_meta(o).get("name", "")))
    highest = max((_generation(o) for o in existing), default=0)
    base_gen = max(highest, min_generation)

    matched: dict[int, Mapping[str, Any]] = {}
    obsolete: list[Mapping[str, Any]] = []
    reasons: list[str] = []
    for obj in existing:
        name = str(_meta(obj).get("name", ""))
        pool = _spec(obj).get("pool")
        index = decode_index(name, count)
        if _generation(obj) < highest:
            reasons.append(f"{name}: old generation")
        elif not isinstance(pool, Mapping) or pool.get("name") != pool_name:
            reasons.append(f"{name}: other pool")
        elif index is None or index >= count or index in matched:
            reasons.append(f"{name}: no free index")
        else:
            matched[index] = obj
            continue
        obsolete.append(obj)

    wanted_content = []
    for i, spec in enumerate(desired):
        c = content(spec)
        form = stored_forms.get(i)
        wanted_content.append(form.stored if form is not None and form.sent == c else c)

    def up_to_date(i: int, obj: Mapping[str, Any], gen: int) -> bool:
        pool = _spec(obj).get("pool")
        if pool != {"name": pool_name, "generation": gen, "resourceSliceCount": count}:
            reasons.append(f"{_meta(obj).get('name')}: pool fields")
            return False
        if content(_spec(obj)) != wanted_content[i]:
            reasons.append(f"{_meta(obj).get('name')}: content")
            return False
        if owner_uid and not _has_owner(obj, node, owner_uid):
            reasons.append(f"{_meta(obj).get('name')}: owner reference")
            return False
        have = _meta(obj).get("labels") or {}
        if any(have.get(k) != v for k, v in labels.items()):
            reasons.append(f"{_meta(obj).get('name')}: labels")
            return False
        return True

    missing = [i for i in range(count) if i not in matched]
    if missing:
        reasons.append(f"missing slice indexes {missing}")
    stale = [i for i, obj in matched.items() if not up_to_date(i, obj, base_gen)]
    deletes = tuple(
        SliceDelete(
            name=str(_meta(o).get("name", "")),
            uid=str(_meta(o).get("uid", "")),
            resource_version=str(_meta(o).get("resourceVersion", "")),
        )
        for o in obsolete
    )
    if not missing and not stale:
        return SlicePlan(generation=base_gen, deletes=deletes, reasons=tuple(reasons))

    gen = base_gen + 1

    def full_spec(i: int) -> dict[str, Any]:
        spec = copy.deepcopy(dict(desired[i]))
        spec["pool"] = {"name": pool_name, "generation": gen, "resourceSliceCount": count}
        return spec

    updates = []
    for i in sorted(matched):
        obj = matched[i]
        meta: dict[str, Any] = {
            k: copy.deepcopy(v) for k, v in _meta(obj).items() if k != "managedFields"
        }
        meta.pop("generateName", None)
        if labels:
            meta["labels"] = {**(meta.get("labels") or {}), **labels}
        if owner_uid:
            others = [
                r
                for r in meta.get("ownerReferences") or []
                if not (isinstance(r, Mapping) and r.get("kind") == "Node")
            ]
            meta["ownerReferences"] = [*others, _owner_ref(node, owner_uid)]
        body = {"apiVersion": API_VERSION, "kind": "ResourceSlice", "metadata": meta}
        body["spec"] = full_spec(i)
        updates.append(SliceWrite(index=i, body=body))
    creates = []
    for i in missing:
        new_meta: dict[str, Any] = {"generateName": generate_name(i, count, driver, node)}
        if labels:
            new_meta["labels"] = dict(labels)
        if owner_uid:
            new_meta["ownerReferences"] = [_owner_ref(node, owner_uid)]
        body = {"apiVersion": API_VERSION, "kind": "ResourceSlice", "metadata": new_meta}
        body["spec"] = full_spec(i)
        creates.append(SliceWrite(index=i, body=body))
    return SlicePlan(
        generation=gen,
        deletes=deletes,
        updates=tuple(updates),
        creates=tuple(creates),
        reasons=tuple(reasons),
    )
