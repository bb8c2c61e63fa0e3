"""The NRI hot path without betterproto2's full decode and encode. Pure code: no I/O.

betterproto2 decodes a CreateContainerRequest in 70 µs (a bare one) to 650 µs (a kubelet-like
1.9 KB one) and encodes a response in 5-55 µs, most of a round trip the runtime waits for while
holding its lock. This module is the one place that reads and writes those bytes by hand:

* :func:`read_create_request` reads only what the pinning policy needs (pod id/uid/name/
  namespace, container id/name/pod sandbox id/env, the container's current cpuset). It first runs
  :func:`dracpu.protowire.check_message` with ``utf8=True`` over the *whole* payload, so it refuses
  exactly the payloads :func:`dracpu.protowire.parse_strict` refuses (truncation, wrong wire
  types, bad nesting, invalid UTF-8 in any string field), with the same error. Its values are
  those betterproto2 would give: the last occurrence of a singular field wins (also for nested
  messages, which betterproto2 replaces rather than merges), repeated ``env`` keeps every entry
  in order, absent fields are ``""``.
* :class:`ResponseEncoder` writes CreateContainerResponse bytes from the policy's plain answer,
  byte for byte what ``bytes(translate.create_response(...))`` gives, encoding each distinct
  cpuset's adjustment and update body once (bounded caches) and joining the container ids in.
* :func:`read_ttrpc_request` and :func:`ttrpc_response` do the same for the ttrpc envelope.

Everything else goes through betterproto2.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from dracpu.core.cpuset import CpuSet
from dracpu.core.pinning import ContainerUpdate
from dracpu.nri import translate
from dracpu.protowire import Wanted, check_message
from generated.nri.pkg.api import v1alpha1 as api
from generated.ttrpc import Request

__all__ = [
    "CreateRequestView",
    "ResponseEncoder",
    "TtrpcRequest",
    "read_create_request",
    "read_ttrpc_request",
    "ttrpc_response",
]

_CACHE_SIZE = 1024
"""Distinct cpusets whose encodings are kept (each a few dozen bytes)."""


@dataclass(frozen=True, slots=True)
class CreateRequestView:
    """The fields of a CreateContainerRequest the policy reads; ``""`` when absent."""

    pod_id: str
    pod_uid: str
    pod_name: str
    pod_namespace: str
    container_id: str
    container_name: str
    container_pod_sandbox_id: str
    env: tuple[str, ...]
    cpus: str  # container.linux.resources.cpu.cpus


@dataclass(frozen=True, slots=True)
class TtrpcRequest:
    """The fields of a ``ttrpc.Request`` the server uses (metadata is ignored, as before)."""

    service: str
    method: str
    payload: bytes
    timeout_nano: int


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    """Decode a varint at ``i``; the payload passed :func:`check_message`, so it is complete."""
    b = buf[i]
    if b < 0x80:
        return b, i + 1
    value = b & 0x7F
    shift = 7
    i += 1
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _scan(
    buf: bytes, start: int, end: int, wanted: frozenset[int]
) -> dict[int, list[tuple[int, int]]]:
    """``(start, end)`` of every length-delimited occurrence of the ``wanted`` field numbers
    between ``start`` and ``end``, in order; other fields are skipped. Only for checked bytes."""
    out: dict[int, list[tuple[int, int]]] = {}
    i = start
    while i < end:
        tag = buf[i]
        if tag < 0x80:  # one-byte tag: field numbers 1-15
            i += 1
        else:
            tag, i = _varint(buf, i)
        wire = tag & 7
        if wire == 2:
            size = buf[i]
            if size < 0x80:
                i += 1
            else:
                size, i = _varint(buf, i)
            number = tag >> 3
            if number in wanted:
                spans = out.get(number)
                if spans is None:
                    out[number] = [(i, i + size)]
                else:
                    spans.append((i, i + size))
            i += size
        elif wire == 0:
            while buf[i] >= 0x80:
                i += 1
            i += 1
        elif wire == 1:
            i += 8
        else:  # 5; groups and undefined types were refused by the check
            i += 4
    return out


def _last(buf: bytes, found: dict[int, list[tuple[int, int]]], number: int) -> str:
    spans = found.get(number)
    if not spans:
        return ""
    s, e = spans[-1]
    return buf[s:e].decode()


def _last_span(found: dict[int, list[tuple[int, int]]], number: int) -> tuple[int, int] | None:
    spans = found.get(number)
    return spans[-1] if spans else None


_CREATE_WANTED: Wanted = {
    api.CreateContainerRequest: frozenset({1, 2}),  # pod, container
    api.PodSandbox: frozenset({1, 2, 3, 4}),  # id, name, uid, namespace
    api.Container: frozenset({1, 2, 3, 8, 11}),  # id, pod_sandbox_id, name, env, linux
    api.LinuxContainer: frozenset({3}),  # resources
    api.LinuxResources: frozenset({2}),  # cpu
    api.LinuxCpu: frozenset({6}),  # cpus
}
_REQUEST_WANTED: Wanted = {Request: frozenset({1, 2, 3, 4})}  # service, method, payload, timeout
_NOWHERE = (-1, -1)


def read_create_request(payload: bytes) -> CreateRequestView:
    """The policy's fields of a CreateContainerRequest, found by the strict check of the whole
    payload; raises :class:`~dracpu.protowire.MalformedMessageError` as ``parse_strict`` would."""
    spans = check_message(api.CreateContainerRequest, payload, utf8=True, wanted=_CREATE_WANTED)
    # (class, where its message starts, field) -> the last occurrence's value. Keyed by the
    # start, only the fields of the last pod, container, ... count: betterproto2 replaces a
    # repeated nested message, it does not merge it. LinuxResources and LinuxCpu also occur
    # under the pod; the chain of starts below picks the container's.
    last: dict[tuple[type, int, int], tuple[int, int]] = {}
    envs: dict[int, list[tuple[int, int]]] = {}
    for cls, at, number, s, e in spans:
        if number == 8 and cls is api.Container:
            envs.setdefault(at, []).append((s, e))
        else:
            last[cls, at, number] = (s, e)
    pod = last.get((api.CreateContainerRequest, 0, 1), _NOWHERE)[0]
    ctr_at = last.get((api.CreateContainerRequest, 0, 2), _NOWHERE)[0]
    linux = last.get((api.Container, ctr_at, 11), _NOWHERE)[0]
    resources = last.get((api.LinuxContainer, linux, 3), _NOWHERE)[0]
    cpu = last.get((api.LinuxResources, resources, 2), _NOWHERE)[0]

    def text(cls: type, at: int, number: int) -> str:
        span = last.get((cls, at, number))
        return payload[span[0] : span[1]].decode() if span is not None else ""

    return CreateRequestView(
        pod_id=text(api.PodSandbox, pod, 1),
        pod_uid=text(api.PodSandbox, pod, 3),
        pod_name=text(api.PodSandbox, pod, 2),
        pod_namespace=text(api.PodSandbox, pod, 4),
        container_id=text(api.Container, ctr_at, 1),
        container_name=text(api.Container, ctr_at, 3),
        container_pod_sandbox_id=text(api.Container, ctr_at, 2),
        env=tuple(payload[s:e].decode() for s, e in envs.get(ctr_at, ())),
        cpus=text(api.LinuxCpu, cpu, 6),
    )


def _text(buf: bytes, found: dict[int, tuple[int, int]], number: int) -> str:
    span = found.get(number)
    return buf[span[0] : span[1]].decode() if span is not None else ""


def read_ttrpc_request(body: bytes) -> TtrpcRequest:
    """A ttrpc Request's service, method, payload and timeout, found by the strict check;
    raises :class:`~dracpu.protowire.MalformedMessageError`."""
    found: dict[int, tuple[int, int]] = {}
    for _, _, number, s, e in check_message(Request, body, utf8=True, wanted=_REQUEST_WANTED):
        found[number] = (s, e)  # one message: the last occurrence wins
    timeout = 0
    if 4 in found:
        value = _varint(body, found[4][0])[0]
        timeout = value - (1 << 64) if value >= 1 << 63 else value  # int64
    payload = found.get(3)
    return TtrpcRequest(
        service=_text(body, found, 1),
        method=_text(body, found, 2),
        payload=body[payload[0] : payload[1]] if payload is not None else b"",
        timeout_nano=timeout,
    )


def _len_prefix(number: int, size: int) -> bytes:
    """The tag and length of length-delimited field ``number`` (< 16) holding ``size`` bytes."""
    out = bytearray((number << 3 | 2,))
    while size >= 0x80:
        out.append(size & 0x7F | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out)


def _field(number: int, body: bytes) -> bytes:
    return _len_prefix(number, len(body)) + body


def ttrpc_response(payload: bytes) -> bytes:
    """``bytes(ttrpc.Response(payload=payload))`` (status OK), without betterproto2."""
    return _field(2, payload) if payload else b""


class ResponseEncoder:
    """CreateContainerResponse bytes from the policy's answer, each cpuset encoded once.

    The output is byte for byte ``bytes(translate.create_response(cpus, updates))``. The caches
    hold at most ``cache_size`` distinct cpusets each (least recently used go first).
    """

    def __init__(self, cache_size: int = _CACHE_SIZE) -> None:
        self._adjust = functools.lru_cache(maxsize=cache_size)(self._encode_adjust)
        self._linux = functools.lru_cache(maxsize=cache_size)(self._encode_linux)

    @staticmethod
    def _encode_adjust(cpus: CpuSet) -> bytes:
        return _field(1, bytes(translate.adjustment(cpus)))

    @staticmethod
    def _encode_linux(cpus: CpuSet) -> bytes:
        linux = translate.to_update(ContainerUpdate("", cpus)).linux
        assert linux is not None
        return _field(2, bytes(linux))

    def update(self, update: ContainerUpdate) -> bytes:
        """One encoded ``ContainerUpdate`` message (no field tag of its own)."""
        cid = update.container_id.encode()
        if update.mems or update.hugepage_limits:
            full = translate.to_update(update).linux
            assert full is not None
            linux = _field(2, bytes(full))
        else:
            linux = self._linux(update.cpus)
        return _field(1, cid) + linux if cid else linux

    def updates(self, number: int, updates: Iterable[ContainerUpdate]) -> bytes:
        """``updates`` as repeated field ``number`` (< 16) of an enclosing message."""
        return b"".join(_field(number, self.update(u)) for u in updates)

    def create_response(self, cpus: CpuSet, updates: Iterable[ContainerUpdate]) -> bytes:
        """The encoded CreateContainerResponse: ``cpus`` for the new container, ``updates``."""
        return self._adjust(cpus) + self.updates(2, updates)
