"""The NRI hot path (dracpu.nri.lazy) gives what betterproto2 gives, and refuses what the strict
decoder refuses.

Requests are generated with betterproto2, then extended by hand with what betterproto2 never
writes: unknown fields of every wire type (top level and nested), repeated occurrences of
singular fields (the last one wins), unpacked encodings of packed fields. Malformed payloads are
mutations of valid ones; each must be refused by both readers or by neither.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dracpu.core.cpuset import CpuSet
from dracpu.core.pinning import ContainerUpdate
from dracpu.nri import translate
from dracpu.nri.lazy import (
    CreateRequestView,
    ResponseEncoder,
    read_create_request,
    read_ttrpc_request,
    ttrpc_response,
)
from dracpu.protowire import MalformedMessageError, parse_strict
from generated.nri.pkg.api import v1alpha1 as api
from generated.ttrpc import KeyValue, Request, Response

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(max_size=12)
env_entry = st.one_of(text, st.builds(lambda k, v: f"{k}={v}", text, text))


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(number: int, body: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(body)) + body


# Unknown fields (numbers no message here uses at any level) of every valid wire type.
unknown_field = st.one_of(
    st.builds(lambda n, v: _varint(n << 3) + _varint(v), st.integers(1000, 5000), st.integers(0)),
    st.builds(
        lambda n, b: _varint(n << 3 | 1) + b,
        st.integers(1000, 5000),
        st.binary(min_size=8, max_size=8),
    ),
    st.builds(
        lambda n, b: _varint(n << 3 | 5) + b,
        st.integers(1000, 5000),
        st.binary(min_size=4, max_size=4),
    ),
    st.builds(_len_field, st.integers(1000, 5000), st.binary(max_size=20)),
)
unknowns = st.lists(unknown_field, max_size=3).map(b"".join)

cpus_text = st.one_of(st.just(""), text, st.sampled_from(["0-3", "2,4-7", "1"]))
# The pod carries LinuxResources/LinuxCpu too: the reader must take the container's cpuset.
pod_resources = st.one_of(
    st.none(),
    st.builds(
        api.LinuxResources,
        cpu=st.one_of(st.none(), st.builds(api.LinuxCpu, cpus=cpus_text, mems=text)),
    ),
)
pods = st.builds(
    api.PodSandbox,
    id=text,
    name=text,
    uid=text,
    namespace=text,
    labels=st.dictionaries(text, text, max_size=3),
    annotations=st.dictionaries(text, text, max_size=3),
    pid=st.integers(0, 2**32 - 1),
    ips=st.lists(text, max_size=2),
    linux=st.one_of(
        st.none(),
        st.builds(
            api.LinuxPodSandbox,
            pod_overhead=pod_resources,
            pod_resources=pod_resources,
            resources=pod_resources,
            cgroup_parent=text,
        ),
    ),
)
linux = st.builds(
    api.LinuxContainer,
    resources=st.one_of(
        st.none(),
        st.builds(
            api.LinuxResources,
            cpu=st.one_of(st.none(), st.builds(api.LinuxCpu, cpus=cpus_text, mems=text)),
        ),
    ),
    cgroups_path=text,
)
containers = st.builds(
    api.Container,
    id=text,
    pod_sandbox_id=text,
    name=text,
    state=st.sampled_from(list(api.ContainerState)),
    labels=st.dictionaries(text, text, max_size=3),
    args=st.lists(text, max_size=3),
    env=st.one_of(st.lists(env_entry, max_size=8), st.lists(env_entry, min_size=200, max_size=400)),
    linux=st.one_of(st.none(), linux),
    exit_code=st.integers(-(2**31), 2**31 - 1),
    created_at=st.integers(-(2**63), 2**63 - 1),
    user=st.one_of(
        st.none(),
        st.builds(
            api.User,
            uid=st.integers(0, 9),
            additional_gids=st.lists(st.integers(0, 2**32 - 1), max_size=4),
        ),
    ),
)


def _unpacked_user(gids: list[int]) -> bytes:
    """Container.user (21) with additional_gids (3) as one varint per element (unpacked)."""
    return _len_field(21, b"".join(_varint(3 << 3) + _varint(g) for g in gids))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A CreateContainerRequest's bytes, with what betterproto2 itself never writes."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 2))):  # 0, 1 or 2 occurrences: the last one wins
        pod = draw(st.one_of(st.none(), pods))
        if pod is not None:
            parts.append(_len_field(1, bytes(pod) + draw(unknowns)))
    for _ in range(draw(st.integers(0, 2))):
        ctr = draw(st.one_of(st.none(), containers))
        if ctr is not None:
            extra = draw(unknowns)
            if draw(st.booleans()):
                extra += _unpacked_user(draw(st.lists(st.integers(0, 2**32 - 1), max_size=3)))
            parts.append(_len_field(2, bytes(ctr) + extra))
    if draw(st.booleans()):  # interleave pods and containers
        parts = [p for pair in zip(parts[::2], parts[1::2], strict=False) for p in pair[::-1]] + (
            parts[len(parts) // 2 * 2 :]
        )
    for chunk in draw(st.lists(unknown_field, max_size=3)):  # unknown fields anywhere
        parts.insert(draw(st.integers(0, len(parts))), chunk)
    return b"".join(parts)


def expected(payload: bytes) -> CreateRequestView:
    """What the full betterproto2 decode gives for the policy's fields."""
    req = parse_strict(api.CreateContainerRequest, payload)
    pod = req.pod or api.PodSandbox()
    ctr = req.container or api.Container()
    cpu = ctr.linux.resources.cpu if ctr.linux and ctr.linux.resources else None
    return CreateRequestView(
        pod_id=pod.id,
        pod_uid=pod.uid,
        pod_name=pod.name,
        pod_namespace=pod.namespace,
        container_id=ctr.id,
        container_name=ctr.name,
        container_pod_sandbox_id=ctr.pod_sandbox_id,
        env=tuple(ctr.env),
        cpus=cpu.cpus if cpu is not None else "",
    )


@SETTINGS
@given(requests())
def test_lazy_read_equals_betterproto2(payload: bytes) -> None:
    assert read_create_request(payload) == expected(payload)


def test_empty_request_reads_as_defaults() -> None:
    assert read_create_request(b"") == CreateRequestView("", "", "", "", "", "", "", (), "")


def test_large_env_is_read_in_order() -> None:
    env = [f"V{i}={'x' * (i % 50)}" for i in range(5000)] + ["DRA_CPUSET_u=1-2"]
    payload = bytes(api.CreateContainerRequest(container=api.Container(id="c", env=env)))
    assert read_create_request(payload).env == tuple(env)


def _mutations(payload: bytes) -> st.SearchStrategy[bytes]:
    n = len(payload)
    return st.one_of(
        st.integers(0, max(0, n - 1)).map(lambda i: payload[:i]),  # truncation
        st.tuples(st.integers(0, max(0, n - 1)), st.integers(0, 255)).map(
            lambda t: payload[: t[0]] + bytes([t[1]]) + payload[t[0] + 1 :]
        ),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=3)).map(
            lambda t: payload[: t[0]] + t[1] + payload[t[0] :]
        ),
    )


@SETTINGS
@given(requests().flatmap(_mutations))
def test_malformed_refused_as_by_the_strict_decoder(payload: bytes) -> None:
    try:
        want: CreateRequestView | str = expected(payload)
    except MalformedMessageError as exc:
        want = str(exc)
    try:
        got: CreateRequestView | str = read_create_request(payload)
    except MalformedMessageError as exc:
        got = str(exc)
    if isinstance(want, str) and isinstance(got, str):
        # Both refuse. The text is the same unless invalid UTF-8 is involved: the lazy reader
        # finds it during the walk (naming the field), betterproto2 after it.
        assert got == want or "not UTF-8" in got
    else:
        assert got == want


@pytest.mark.parametrize(
    "payload",
    [
        # An annotation value (never read by the policy) that is not UTF-8.
        _len_field(1, _len_field(6, _len_field(1, b"k") + _len_field(2, b"\xff"))),
        _len_field(2, _len_field(7, b"\xc3")),  # Container.args, cut UTF-8
        _len_field(2, b"\x0a\x05ab"),  # Container.id declares more than sent
        b"\x12\x02\x08\x07",  # varint where Container.id belongs
        b"\x0b",  # wire type 3 (group)
    ],
)
def test_refusals_in_fields_the_policy_does_not_read(payload: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        parse_strict(api.CreateContainerRequest, payload)
    with pytest.raises(MalformedMessageError):
        read_create_request(payload)


cpusets = st.sets(st.integers(0, 255), max_size=12).map(CpuSet.of)
updates = st.lists(st.builds(ContainerUpdate, st.one_of(st.just(""), text), cpusets), max_size=30)


@SETTINGS
@given(cpusets, updates)
def test_encoded_response_is_betterproto2s(cpus: CpuSet, ups: list[ContainerUpdate]) -> None:
    encoder = ResponseEncoder(cache_size=4)  # small, so eviction is exercised too
    want = bytes(translate.create_response(cpus, ups))
    assert encoder.create_response(cpus, ups) == want
    assert encoder.create_response(cpus, ups) == want  # from the caches


@SETTINGS
@given(
    text,
    text,
    st.binary(max_size=300),
    st.integers(-(2**63), 2**63 - 1),
    st.lists(st.builds(KeyValue, key=text, value=text), max_size=3),
    unknowns,
)
def test_ttrpc_request_read_equals_betterproto2(
    service: str, method: str, payload: bytes, timeout: int, meta: list[KeyValue], extra: bytes
) -> None:
    body = (
        bytes(
            Request(
                service=service,
                method=method,
                payload=payload,
                timeout_nano=timeout,
                metadata=meta,
            )
        )
        + extra
    )
    want = Request.parse(body)
    got = read_ttrpc_request(body)
    assert (got.service, got.method, got.payload, got.timeout_nano) == (
        want.service,
        want.method,
        want.payload,
        want.timeout_nano,
    )


@pytest.mark.parametrize("body", [b"\x0a\x03ab", b"\x1a", b"\x0a\x01\xff", b"\x20\x80"])
def test_malformed_ttrpc_request_refused(body: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        read_ttrpc_request(body)


@given(st.binary(max_size=5000))
def test_ttrpc_response_is_betterproto2s(payload: bytes) -> None:
    assert ttrpc_response(payload) == bytes(Response(payload=payload))
