"""Strict protobuf wire-format check, run before betterproto2 decodes a message from a peer.

betterproto2 decodes leniently: a truncated payload decodes as a shortened message (a string
field cut short, a missing tail), and a field sent with the wrong wire type becomes a value of
the wrong Python type (an ``int`` where the schema says ``str`` or a message). Neither may reach
a handler. :func:`check_message` walks the bytes once, driven by the betterproto2 message class's
own field metadata, and raises :class:`MalformedMessageError` naming the message, the field and
the byte offset when:

* a tag, varint, fixed-width value or length-delimited body runs past the end (truncation);
* a varint is longer than 10 bytes, a field number is 0, or the wire type is 3/4 (groups, which
  no proto3 schema here uses) or 6/7 (undefined);
* a known field arrives with a wire type its proto type never uses (a varint for a string, a
  length-delimited body for an ``int64``, ...); packed repeated scalars are accepted, as proto3
  requires, and their bodies are checked too;
* nested messages and map entries fail the same checks (recursively), or nest deeper than
  ``max_depth``.

Strings are not decoded here: betterproto2's parse rejects invalid UTF-8 and
:func:`parse_strict` turns that into the same error. Unknown field numbers are only checked for
framing (their bytes must be well formed), so newer
peers that add fields keep working. Once a payload passes, ``cls.parse`` cannot produce a value
of the wrong type. Used by the kubelet gRPC codec and the NRI request decoder. Pure code: no I/O.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, TypeVar

import betterproto2

from dracpu.errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "MalformedMessageError",
    "Span",
    "Wanted",
    "check_message",
    "parse_strict",
]

# protobuf's own C++ and Go decoders stop at 100 levels; our messages nest fewer than 10.
DEFAULT_MAX_DEPTH = 64

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5

_WIRE_BY_TYPE: dict[str, int] = {
    **{t: _VARINT for t in betterproto2.WIRE_VARINT_TYPES},
    **{t: _FIXED32 for t in betterproto2.WIRE_FIXED_32_TYPES},
    **{t: _FIXED64 for t in betterproto2.WIRE_FIXED_64_TYPES},
    **{t: _LEN for t in betterproto2.WIRE_LEN_DELIM_TYPES},
}

# What a length-delimited body holds: nothing to check (string, bytes), a nested message, or a
# packed run of scalars of the given wire type.
_RAW, _NESTED, _PACKED = 0, 2, 3

M = TypeVar("M", bound=betterproto2.Message)


class MalformedMessageError(ProtocolError):
    """A peer's protobuf payload is not a valid encoding of the expected message.

    ``message_type`` names the expected message, ``offset`` is where in the (outermost) payload
    the problem starts; both are in the text.
    """

    def __init__(self, message_type: str, problem: str, *, offset: int) -> None:
        self.message_type = message_type
        self.offset = offset
        super().__init__(f"malformed {message_type}: {problem} at byte {offset}")


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    wire: int  # the wire type the schema uses for a single value
    body: int  # what a length-delimited body holds (_RAW/_NESTED/_PACKED)
    nested: type[betterproto2.Message] | None
    packed_wire: int  # for _PACKED: the wire type of each element
    text: bool  # a string field: its bytes must be UTF-8 (checked when ``utf8`` is asked for)


@functools.cache
def _schema(cls: type[betterproto2.Message]) -> dict[int, _Field]:
    """Field number -> expectations, from betterproto2's metadata of ``cls`` (cached per class)."""
    meta: Any = cls._betterproto  # type: ignore[arg-type]  # betterproto2's classproperty
    fields: dict[int, _Field] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # messages are dataclasses
        fm = meta.meta_by_field_name[f.name]
        wire = _WIRE_BY_TYPE[fm.proto_type]
        nested: type[betterproto2.Message] | None = None
        body = _RAW
        packed_wire = wire
        if fm.proto_type == betterproto2.TYPE_MESSAGE:
            body = _NESTED
            nested = fm.unwrap() if fm.unwrap else meta.cls_by_field[f.name]
        elif fm.proto_type == betterproto2.TYPE_MAP:
            body = _NESTED
            nested = meta.cls_by_field[f.name]
        elif fm.repeated and fm.proto_type in betterproto2.PACKED_TYPES:
            body = _PACKED
        text = fm.proto_type == betterproto2.TYPE_STRING
        fields[fm.number] = _Field(f.name, wire, body, nested, packed_wire, text)
    return fields


def _varint(data: bytes, pos: int, end: int, what: str, cls: str) -> tuple[int, int]:
    value = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise MalformedMessageError(cls, f"truncated {what}", offset=start)
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise MalformedMessageError(cls, f"{what} longer than 10 bytes", offset=start)


def _check_packed(data: bytes, pos: int, end: int, f: _Field, cls: str) -> None:
    size = end - pos
    width = {_FIXED32: 4, _FIXED64: 8}.get(f.packed_wire, 1)
    if size % width:
        raise MalformedMessageError(
            cls, f"packed field {f.name} length {size} is not a multiple of its width", offset=pos
        )
    if f.packed_wire == _VARINT:
        while pos < end:
            _, pos = _varint(data, pos, end, f"element of packed field {f.name}", cls)


Span = tuple[type[betterproto2.Message], int, int, int, int]
"""A collected field: ``(message class, where that message's bytes start, field number,
value start, value end)``; the value is the body of a length-delimited field, or the varint."""

Wanted = dict[type[betterproto2.Message], frozenset[int]]


def _check(
    cls: type[betterproto2.Message],
    data: bytes,
    pos: int,
    end: int,
    depth: int,
    max_depth: int,
    utf8: bool,
    wanted: Wanted | None = None,
    spans: list[Span] | None = None,
) -> None:
    name = cls.__name__
    if depth > max_depth:
        raise MalformedMessageError(name, f"nested deeper than {max_depth} levels", offset=pos)
    schema = _schema(cls)
    collect = wanted.get(cls) if wanted is not None else None
    start = pos
    while pos < end:
        tag_at = pos
        tag = data[pos]
        if tag < 0x80:  # fast path: one-byte tag (field numbers 1-15)
            pos += 1
        else:
            tag, pos = _varint(data, pos, end, "field tag", name)
        number, wire = tag >> 3, tag & 7
        f = schema.get(number)
        if wire == _LEN:
            if pos < end and data[pos] < 0x80:
                size, body = data[pos], pos + 1
            else:
                size, body = _varint(data, pos, end, _where(f, number, "length of "), name)
            pos = body + size
            if pos > end:
                raise MalformedMessageError(
                    name,
                    f"{_where(f, number)} declares {size} bytes, {end - body} left",
                    offset=tag_at,
                )
            if f is None:
                continue
            if collect is not None and number in collect:
                assert spans is not None
                spans.append((cls, start, number, body, pos))
            if f.body == _NESTED:
                assert f.nested is not None
                _check(f.nested, data, body, pos, depth + 1, max_depth, utf8, wanted, spans)
            elif f.body == _PACKED:
                _check_packed(data, body, pos, f, name)
            elif f.wire != _LEN:
                raise _wrong_wire(name, f, number, wire, tag_at)
            elif utf8 and f.text:
                try:
                    data[body:pos].decode()
                except UnicodeDecodeError as exc:
                    raise MalformedMessageError(
                        name, f"{_where(f, number)} is not UTF-8 ({exc.reason})", offset=body
                    ) from None
            continue
        if number == 0:
            raise MalformedMessageError(name, "field number 0", offset=tag_at)
        if wire == _VARINT:
            value_at = pos
            _, pos = _varint(data, pos, end, _where(f, number), name)
            if collect is not None and number in collect and f is not None and f.wire == wire:
                assert spans is not None
                spans.append((cls, start, number, value_at, pos))
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
            if pos > end:
                raise MalformedMessageError(name, f"truncated {_where(f, number)}", offset=tag_at)
        else:
            raise MalformedMessageError(
                name, f"{_where(f, number)} has wire type {wire}", offset=tag_at
            )
        if f is not None and wire != f.wire:
            raise _wrong_wire(name, f, number, wire, tag_at)


def _where(f: _Field | None, number: int, prefix: str = "") -> str:
    return f"{prefix}field {f.name} ({number})" if f is not None else f"{prefix}field {number}"


def _wrong_wire(name: str, f: _Field, number: int, wire: int, offset: int) -> MalformedMessageError:
    return MalformedMessageError(
        name,
        f"field {f.name} ({number}) has wire type {wire}, its type uses {f.wire}",
        offset=offset,
    )


def check_message(
    cls: type[betterproto2.Message],
    data: bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    utf8: bool = False,
    wanted: Wanted | None = None,
) -> list[Span]:
    """Raise :class:`MalformedMessageError` unless ``data`` is a well-formed ``cls`` encoding.

    Linear in ``len(data)``; nothing is decoded or copied. ``utf8`` also checks that every
    string field of the schema (at any depth) is UTF-8, which ``cls.parse`` would otherwise
    find: a reader that decodes only some fields (:mod:`dracpu.nri.lazy`) asks for it, so it
    refuses exactly what :func:`parse_strict` refuses. Such a reader also names the fields it
    reads in ``wanted`` (message class -> field numbers): the same walk returns where each
    occurrence is, in wire order (:data:`Span`; length-delimited and varint fields with their
    schema's wire type), so it need not walk the bytes again. Without ``wanted``: ``[]``.
    """
    spans: list[Span] = []
    _check(cls, data, 0, len(data), 0, max_depth, utf8, wanted, spans)
    return spans


def parse_strict(cls: type[M], data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> M:
    """:func:`check_message`, then ``cls.parse(data)``; any decode failure becomes
    :class:`MalformedMessageError` (a payload that passed the check should not fail to parse,
    but a foreign exception must never escape to a handler)."""
    check_message(cls, data, max_depth=max_depth)
    try:
        return cls.parse(data)
    except Exception as exc:
        raise MalformedMessageError(cls.__name__, f"undecodable ({exc})", offset=0) from exc
