"""dracpu.protowire: the strict wire-format check agrees with real encoders and refuses what
betterproto2 would decode leniently."""

from __future__ import annotations

import re

import betterproto2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dracpu.protowire import MalformedMessageError, check_message, parse_strict
from generated.k8s.io.kubelet.pkg.apis.dra import v1
from generated.nri.pkg.api import v1alpha1 as api
from generated.ttrpc import Request

text = st.text(max_size=20)


@st.composite
def containers(draw: st.DrawFn) -> api.Container:
    return api.Container(
        id=draw(text),
        name=draw(text),
        state=api.ContainerState(draw(st.integers(0, 4))),
        labels=draw(st.dictionaries(text, text, max_size=3)),
        args=draw(st.lists(text, max_size=3)),
        pid=draw(st.integers(0, 2**32 - 1)),
        linux=api.LinuxContainer(resources=api.LinuxResources(cpu=api.LinuxCpu(cpus=draw(text)))),
    )


def _top_level_boundaries(data: bytes) -> set[int]:
    ends = {0}
    pos = 0
    for parsed in betterproto2.parse_fields(data):
        pos += len(parsed.raw)
        ends.add(pos)
    return ends


@settings(max_examples=60, deadline=None)
@given(containers())
def test_valid_encodings_pass_and_every_cut_inside_a_field_is_refused(c: api.Container) -> None:
    data = bytes(api.CreateContainerRequest(container=c))
    assert parse_strict(api.CreateContainerRequest, data) == api.CreateContainerRequest(container=c)
    # A cut on a top-level field boundary is a valid shorter message; any other cut is not.
    boundaries = _top_level_boundaries(data)
    for cut in range(len(data)):
        if cut in boundaries:
            continue
        with pytest.raises(MalformedMessageError):
            check_message(api.CreateContainerRequest, data[:cut])


def test_grpcio_peer_encoding_passes() -> None:
    from tests.kubelet.conftest import _api

    dra = _api("dra/v1/api.proto")
    request = dra.pb2.NodePrepareResourcesRequest(
        claims=[dra.pb2.Claim(namespace="ns", uid=f"u{i}", name="n" * 300) for i in range(20)]
    )
    data = request.SerializeToString()
    assert len(parse_strict(v1.NodePrepareResourcesRequest, data).claims) == 20


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x0a\x02\x08\x01", "field namespace (1) has wire type 0"),
        (b"\x08\x01", "field claims (1) has wire type 0"),
        (b"\x0d\x00\x00\x00\x00", "field claims (1) has wire type 5"),
        (b"\x0a\x05\x0a\x01", "declares 5 bytes, 2 left"),
        (b"\x0a", "truncated length of field claims"),
        (b"\x00\x01", "field number 0"),
        (b"\x0b", "wire type 3"),
        (b"\x0f", "wire type 7"),
        (b"\x80" * 11, "longer than 10 bytes"),
        (b"\x19\x00\x00", "truncated field 3"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_payloads_name_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(MalformedMessageError, match=re.escape(problem)):
        check_message(v1.NodePrepareResourcesRequest, data)


def test_nesting_is_capped() -> None:
    """NodePrepareResourcesRequest -> Claim is one level of nesting."""
    data = b"\x0a\x02\x0a\x00"
    with pytest.raises(MalformedMessageError, match="nested deeper than 0 levels"):
        check_message(v1.NodePrepareResourcesRequest, data, max_depth=0)
    check_message(v1.NodePrepareResourcesRequest, data, max_depth=1)


def test_unknown_fields_of_every_wire_type_are_skipped_when_well_formed() -> None:
    data = (
        b"\xa0\x06\x01" + b"\xa9\x06" + b"\x00" * 8 + b"\xaa\x06\x01x" + b"\xad\x06" + b"\x00" * 4
    )
    check_message(v1.NodePrepareResourcesRequest, data)
    with pytest.raises(MalformedMessageError, match="truncated field 101"):
        check_message(v1.NodePrepareResourcesRequest, b"\xa9\x06\x00")


def test_check_message_returns_the_wanted_fields_it_walked() -> None:
    body = bytes(Request(service="svc", method="M", payload=b"\x01\x02", timeout_nano=7))
    body += bytes(Request(method="N"))  # a repeated singular field: both occurrences are listed
    spans = check_message(Request, body, wanted={Request: frozenset({2, 4})})
    got = [(cls, at, number, body[s:e]) for cls, at, number, s, e in spans]
    assert got == [(Request, 0, 2, b"M"), (Request, 0, 4, b"\x07"), (Request, 0, 2, b"N")]
    assert check_message(Request, body) == []
