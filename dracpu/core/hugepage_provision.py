"""Upstream dra-driver-memory's ``HugePageProvision`` document → per-node hugepage counts.

The format (upstream ``pkg/hugepages/provision/api/v0``)::

    kind: HugePageProvision
    metadata: {name: balanced-runtime}
    spec:
      pages:
      - size: "2M"        # 2M / 2Mi / 2m, 1G / 1Gi / 1g; other sizes as <n>K|M|G[i]
        count: 4096
        node: 1           # optional: without it, count is split over the NUMA nodes

Splitting follows upstream: ``count // nodes`` on every node with memory, the remainder on the
lowest node. Unlike upstream, ``node`` is honoured on multi-node machines too (upstream ignores
it there). ``defaultHugepagesSize`` is a boot parameter and is reported, not applied. Each
(size, node) may be set once; a second entry for it is an error rather than a silent override.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dracpu.core.memory import GIB, KIB, MIB, size_string
from dracpu.errors import InvalidValueError

__all__ = [
    "KIND",
    "HugePageProvision",
    "PageRequest",
    "ProvisionTarget",
    "parse_page_size",
    "parse_provision",
    "plan_provision",
]

KIND = "HugePageProvision"
_SIZE = re.compile(r"([0-9]+)([KkMmGg])(?:i|B)?")
_UNIT = {"k": KIB, "m": MIB, "g": GIB}


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One ``spec.pages`` entry: ``count`` pages of ``size`` bytes, on ``node`` or spread."""

    size: int
    count: int
    node: int | None = None


@dataclass(frozen=True, slots=True)
class HugePageProvision:
    """A parsed ``HugePageProvision`` document."""

    name: str
    pages: tuple[PageRequest, ...]
    default_size: str | None = None


@dataclass(frozen=True, slots=True)
class ProvisionTarget:
    """Set ``node``'s pool of ``page_size`` to ``count`` pages."""

    node: int
    page_size: int
    count: int


def parse_page_size(text: object, *, origin: str = "") -> int:
    """``"2M"``, ``"2Mi"``, ``"1g"``, ``"64Ki"`` → bytes; anything else names the value."""
    m = _SIZE.fullmatch(str(text)) if isinstance(text, str | int) else None
    if m is None:
        raise InvalidValueError(
            f"invalid hugepage size {text!r} (expected e.g. 2M, 2Mi, 1G)", value=text, origin=origin
        )
    return int(m.group(1)) * _UNIT[m.group(2).lower()]


def parse_provision(doc: object, *, origin: str) -> HugePageProvision:
    """Validate a loaded YAML/JSON document; errors name the field and ``origin`` (the file)."""
    if not isinstance(doc, Mapping):
        raise InvalidValueError("not a HugePageProvision mapping", value=doc, origin=origin)
    kind = doc.get("kind", KIND)
    if kind != KIND:
        raise InvalidValueError(f"kind {kind!r} is not {KIND!r}", value=kind, origin=origin)
    metadata = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    if not isinstance(metadata, Mapping) or not isinstance(spec, Mapping):
        raise InvalidValueError("metadata and spec must be mappings", value=doc, origin=origin)
    pages = spec.get("pages") or []
    if not isinstance(pages, list):
        raise InvalidValueError("spec.pages must be a list", value=pages, origin=origin)
    parsed = tuple(_page(entry, f"{origin}: spec.pages[{i}]") for i, entry in enumerate(pages))
    default = spec.get("defaultHugepagesSize")
    return HugePageProvision(
        name=str(metadata.get("name", "")),
        pages=parsed,
        default_size=None if default is None else str(default),
    )


def _page(entry: Any, where: str) -> PageRequest:
    if not isinstance(entry, Mapping):
        raise InvalidValueError("not a mapping", value=entry, origin=where)
    unknown = sorted(set(entry) - {"size", "count", "node"})
    if unknown:
        raise InvalidValueError(f"unknown fields {unknown}", value=unknown, origin=where)
    size = parse_page_size(entry.get("size"), origin=f"{where}.size")
    count = entry.get("count", 0)
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count < 2**31:
        raise InvalidValueError(
            f"count {count!r} is not a non-negative integer", value=count, origin=where
        )
    node = entry.get("node")
    if node is not None and (not isinstance(node, int) or isinstance(node, bool) or node < 0):
        raise InvalidValueError(f"node {node!r} is not a NUMA node id", value=node, origin=where)
    return PageRequest(size=size, count=count, node=node)


def plan_provision(
    provision: HugePageProvision, nodes: Sequence[int], *, origin: str = ""
) -> list[ProvisionTarget]:
    """Per-node targets for ``nodes`` (the NUMA nodes with memory), in document order."""
    if not nodes:
        raise InvalidValueError("the machine has no NUMA node with memory", origin=origin)
    ordered = sorted(nodes)
    targets: list[ProvisionTarget] = []
    seen: dict[tuple[int, int], int] = {}
    for i, page in enumerate(provision.pages):
        where = f"{origin}: spec.pages[{i}]" if origin else f"spec.pages[{i}]"
        if page.node is not None:
            if page.node not in ordered:
                raise InvalidValueError(
                    f"node {page.node} is not a NUMA node with memory (nodes: {ordered})",
                    value=page.node,
                    origin=where,
                )
            shares = [(page.node, page.count)]
        else:
            each, extra = divmod(page.count, len(ordered))
            shares = [(n, each + (extra if n == ordered[0] else 0)) for n in ordered]
        for node, count in shares:
            first = seen.setdefault((node, page.size), i)
            if first != i:
                raise InvalidValueError(
                    f"size {size_string(page.size)} on node {node} is already set by "
                    f"spec.pages[{first}]",
                    value=page.size,
                    origin=where,
                )
            targets.append(ProvisionTarget(node, page.size, count))
    return targets
