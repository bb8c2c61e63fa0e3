"""Property tests of the ttrpc and NRI mux codecs: any chunking, interleaving, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dracpu.nri import FrameError, OversizedMessageError, mux, ttrpc
from generated.nri.pkg.api import v1alpha1 as api
from generated.ttrpc import Request, Response

messages = st.lists(
    st.tuples(
        st.integers(0, 2**32 - 1),
        st.sampled_from([1, 2, 3, 7]),
        st.integers(0, 255),
        st.binary(max_size=9000),
    ),
    max_size=8,
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the (sorted, deduplicated) cut points."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


@given(messages, st.lists(st.integers(0, 10**6), max_size=30))
def test_ttrpc_decoder_reassembles_any_chunking(
    msgs: list[tuple[int, int, int, bytes]], cuts: list[int]
) -> None:
    wire = b"".join(ttrpc.encode(sid, t, body, flags=f) for sid, t, f, body in msgs)
    decoder = ttrpc.Decoder()
    got = []
    for chunk in chunked(wire, cuts):
        got.extend(decoder.feed(chunk))
    assert [(m.stream_id, m.type, m.flags, m.body) for m in got] == msgs
    assert decoder.buffered == 0


@given(st.integers(ttrpc.MAX_MESSAGE_LENGTH + 1, 2**32 - 1), st.binary(max_size=100))
def test_ttrpc_oversized_header_fails_before_buffering_the_body(length: int, tail: bytes) -> None:
    decoder = ttrpc.Decoder(origin="test")
    with pytest.raises(FrameError) as info:
        decoder.feed(ttrpc.HEADER.pack(length, 1, 1, 0) + tail)
    assert info.value.value == length
    assert "test" in str(info.value)


def test_ttrpc_refuses_to_send_more_than_4mib() -> None:
    ttrpc.encode(1, 1, bytes(ttrpc.MAX_MESSAGE_LENGTH))
    with pytest.raises(OversizedMessageError):
        ttrpc.encode(1, 1, bytes(ttrpc.MAX_MESSAGE_LENGTH + 1), method="x/Y")


@given(st.integers(0, 3 * mux.GO_READ_BUFFER))
def test_mux_split_follows_go_bufio_pattern(size: int) -> None:
    message = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frames = mux.Decoder().feed(mux.encode_message(2, message))
    assert all(conn == 2 for conn, _ in frames)
    assert b"".join(p for _, p in frames) == message
    if size <= mux.GO_READ_BUFFER:
        assert [len(p) for _, p in frames] == [size]
    else:
        assert [len(p) for _, p in frames] == [mux.GO_READ_BUFFER, size - mux.GO_READ_BUFFER]


@st.composite
def interleaved_frames(draw: st.DrawFn) -> tuple[dict[int, bytes], list[tuple[int, bytes]]]:
    """Per-conn byte streams cut into frames, frames of different conns interleaved."""
    streams: dict[int, bytes] = {}
    per_conn: dict[int, list[bytes]] = {}
    for conn in (1, 2, 7):
        data = draw(st.binary(max_size=6000))
        streams[conn] = data
        cuts = draw(st.lists(st.integers(0, 6000), max_size=6))
        per_conn[conn] = [c for c in chunked(data, cuts) if c] if data else []
    order = draw(st.permutations([c for c, fs in per_conn.items() for _ in fs]))
    cursor = dict.fromkeys(per_conn, 0)
    frames = []
    for conn in order:
        frames.append((conn, per_conn[conn][cursor[conn]]))
        cursor[conn] += 1
    return streams, frames


@given(interleaved_frames(), st.lists(st.integers(0, 10**6), max_size=20))
def test_mux_decoder_demultiplexes_interleaved_conns(
    case: tuple[dict[int, bytes], list[tuple[int, bytes]]], cuts: list[int]
) -> None:
    streams, frames = case
    wire = b"".join(mux.HEADER.pack(c, len(p)) + p for c, p in frames)
    decoder = mux.Decoder()
    got: dict[int, bytes] = dict.fromkeys(streams, b"")
    for chunk in chunked(wire, cuts):
        for conn, payload in decoder.feed(chunk):
            got[conn] += payload
    assert got == streams
    assert decoder.buffered == 0


@settings(max_examples=300)
@given(st.lists(st.binary(min_size=1, max_size=4096), min_size=1, max_size=50))
def test_mux_decoder_is_bounded_on_garbage(chunks: list[bytes]) -> None:
    """Garbage either parses as frames, waits for at most one bounded frame, or fails fast."""
    decoder = mux.Decoder()
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            assert decoder.buffered <= mux.HEADER_SIZE + mux.MAX_PAYLOAD
    except FrameError as exc:
        assert exc.value > mux.MAX_PAYLOAD  # noqa: PT017


def test_register_plugin_test_vector() -> None:
    """The RegisterPlugin bytes of NRI-PROTOCOL.md §4.4, produced by our encoders."""
    payload = bytes(api.RegisterPluginRequest(plugin_name="dra-cpu", plugin_idx="00"))
    body = bytes(
        Request(
            service="nri.pkg.api.v1alpha1.Runtime",
            method="RegisterPlugin",
            payload=payload,
            timeout_nano=5_000_000_000,
        )
    )
    wire = mux.encode_message(2, ttrpc.encode(1, ttrpc.MessageType.REQUEST, body))
    expected = bytes.fromhex(
        "00000002 0000004d 00000043 00000001 01 00"
        "0a1c 6e72692e706b672e6170692e7631616c706861312e52756e74696d65"
        "120e 5265676973746572506c7567696e"
        "1a0d 0a07 6472612d637075 1202 3030"
        "2080e497d012".replace(" ", "")
    )
    assert wire == expected


def test_configure_response_and_unimplemented_test_vectors() -> None:
    body = bytes(Response(payload=bytes(api.ConfigureResponse(events=0x208))))
    wire = mux.encode_message(1, ttrpc.encode(1, ttrpc.MessageType.RESPONSE, body))
    assert wire == bytes.fromhex("00000001 0000000f 00000005 00000001 02 00 1203 1088 04")
    from generated.google.rpc import Status

    err = bytes(Response(status=Status(code=12, message="method RunPodSandbox")))
    assert err == bytes.fromhex("0a18 080c 1214 6d6574686f642052756e506f6453616e64626f78")
