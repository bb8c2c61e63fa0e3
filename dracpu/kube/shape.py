"""The one validator of API server bodies: decode JSON and check the shape dracpu relies on.

Everything the API server sends is untrusted until it passes here: a proxy, a broken or hostile
server may answer with a JSON array where a list object belongs, ``items`` as a number,
``metadata`` as a string, or arrays nested thousands deep. Each check raises
:class:`~dracpu.kube.errors.BadBodyError` naming the request and the JSON path of the bad value,
so loops log one clear line and back off instead of dying on an ``AttributeError`` or a
``RecursionError`` deep inside.

Checked: the body decodes as UTF-8 JSON, nests at most ``MAX_DEPTH`` levels (checked without
recursion), and every field dracpu reads has the JSON type it expects, where present (``null``
counts as absent). Objects of a list and of watch events (bookmarks aside) must name themselves
(``metadata.name``). Unknown fields are not checked: they are passed through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from dracpu.kube.errors import BadBodyError

__all__ = ["MAX_DEPTH", "check_list", "check_object", "check_watch_event", "decode_json"]

MAX_DEPTH = 64
"""Deepest nesting accepted; Kubernetes objects, managedFields included, stay far below it."""

_JSON_TYPE = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}

# (path, type) for every field dracpu reads from an object, parents before children; ``[]``
# means every element of the array. Checked only where present and not null.
_OBJECT_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("metadata", dict),
    ("metadata.name", str),
    ("metadata.namespace", str),
    ("metadata.uid", str),
    ("metadata.resourceVersion", str),
    ("metadata.generateName", str),
    ("metadata.continue", str),
    ("metadata.labels", dict),
    ("metadata.annotations", dict),
    ("metadata.ownerReferences", list),
    ("metadata.ownerReferences[]", dict),
    ("spec", dict),
    ("status", dict),
    # ResourceSlice (spec.devices an array of devices) and ResourceClaim (an object of requests)
    ("spec.pool", dict),
    ("spec.devices", (list, dict)),
    ("spec.devices[]", dict),
    # ResourceClaim
    ("status.allocation", dict),
    ("status.allocation.devices", dict),
    ("status.allocation.devices.results", list),
    ("status.allocation.devices.results[]", dict),
    ("status.allocation.nodeSelector", dict),
    ("status.allocation.nodeSelector.nodeSelectorTerms", list),
    ("status.allocation.nodeSelector.nodeSelectorTerms[]", dict),
    ("status.allocation.nodeSelector.nodeSelectorTerms[].matchFields", list),
    ("status.allocation.nodeSelector.nodeSelectorTerms[].matchFields[]", dict),
    ("status.allocation.nodeSelector.nodeSelectorTerms[].matchFields[].values", list),
)


def _split(path: str) -> list[str]:
    return [part for seg in path.split(".") for part in seg.replace("[]", ".[]").split(".")]


_PARSED = tuple((_split(path), kind) for path, kind in _OBJECT_FIELDS)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _values(root: Any, parts: list[str], prefix: str) -> Iterator[tuple[str, Any]]:
    """Every (path, value) that ``parts`` reaches in ``root``, skipping absent ones."""
    level: list[tuple[str, Any]] = [(prefix, root)]
    for part in parts:
        nxt: list[tuple[str, Any]] = []
        for where, value in level:
            if part == "[]":
                if isinstance(value, list):
                    nxt.extend((f"{where}[{i}]", v) for i, v in enumerate(value) if v is not None)
            elif isinstance(value, dict):
                child = value.get(part)
                if child is not None:
                    nxt.append((f"{where}.{part}" if where else part, child))
        level = nxt
    return iter(level)


def _check_depth(body: Any, method: str, url: str) -> None:
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadBodyError(
                f"nested deeper than {MAX_DEPTH} levels", method=method, url=url, field=""
            )
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, dict | list))


def decode_json(data: bytes, *, method: str, url: str) -> Any:
    """Parse ``data`` as UTF-8 JSON no deeper than :data:`MAX_DEPTH`; BadBodyError otherwise."""
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadBodyError(f"not JSON: {exc}", method=method, url=url) from exc
    except RecursionError as exc:
        raise BadBodyError(
            f"nested deeper than {MAX_DEPTH} levels", method=method, url=url
        ) from exc
    _check_depth(body, method, url)
    return body


def _expect(value: Any, kind: type | tuple[type, ...], where: str, method: str, url: str) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        raise BadBodyError(
            f"is {_type_name(value)}, expected {' or '.join(_JSON_TYPE[k] for k in kinds)}",
            method=method,
            url=url,
            field=where or "(body)",
        )


def check_object(
    body: Any, *, method: str, url: str, field: str = "", named: bool = False
) -> dict[str, Any]:
    """``body`` as an API object whose read fields have the right types; ``named`` requires
    ``metadata.name``. Returns it unchanged (typed); raises BadBodyError naming the field."""
    _expect(body, dict, field, method, url)
    is_status = body.get("kind") == "Status"  # its ``status`` is a string ("Failure")
    for parts, kind in _PARSED:
        if is_status and parts[0] == "status":
            continue
        for where, value in _values(body, parts, field):
            _expect(value, kind, where, method, url)
    if named:
        meta = body.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            where = f"{field}.metadata.name" if field else "metadata.name"
            raise BadBodyError("is missing", method=method, url=url, field=where)
    result: dict[str, Any] = body
    return result


def check_list(body: Any, *, method: str, url: str) -> dict[str, Any]:
    """``body`` as a list page: an object whose ``items`` is an array of named objects."""
    page = check_object(body, method=method, url=url)
    items = page.get("items")
    if items is not None:
        _expect(items, list, "items", method, url)
        for i, item in enumerate(items):
            check_object(item, method=method, url=url, field=f"items[{i}]", named=True)
    return page


def check_watch_event(body: Any, *, url: str) -> dict[str, Any]:
    """``body`` as a watch event: ``type`` a string, ``object`` an object (a named one unless
    the event is a BOOKMARK or ERROR)."""
    event = check_object(body, method="WATCH", url=url)
    _expect(event.get("type"), str, "type", "WATCH", url)
    kind = event["type"]
    check_object(
        event.get("object"),
        method="WATCH",
        url=url,
        field="object",
        named=kind not in ("BOOKMARK", "ERROR"),
    )
    return event
