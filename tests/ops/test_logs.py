"""Logging: verbosity levels, text and JSON formats with fields, and repeat thinning."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from dracpu.logs import LogFormat, RepeatFilter, V, configure_logging, fields


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, list[logging.Handler]]]:
    stream = io.StringIO()
    installed: list[logging.Handler] = []
    yield stream, installed
    root = logging.getLogger()
    for handler in installed:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def test_verbosity_gates_v_levels(capture: tuple[io.StringIO, list[logging.Handler]]) -> None:
    stream, installed = capture
    installed.append(configure_logging(2, LogFormat.TEXT, stream))
    log = logging.getLogger("dracpu.test")
    log.info("zero")
    log.log(V(2), "two")
    log.log(V(4), "four")
    log.warning("warn")
    lines = stream.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["zero", "two", "warn"]
    assert [line[0] for line in lines] == ["I", "I", "W"]


def test_json_lines_carry_claim_fields(capture: tuple[io.StringIO, list[logging.Handler]]) -> None:
    stream, installed = capture
    installed.append(configure_logging(4, LogFormat.JSON, stream))
    log = logging.getLogger("dracpu.test")
    log.log(
        V(4), "prepared %s", "ns/claim", extra=fields(claim="uid-1", pod="ns/p", container=None)
    )
    body = json.loads(stream.getvalue())
    assert body["msg"] == "prepared ns/claim"
    assert (body["level"], body["claim"], body["pod"]) == ("V4", "uid-1", "ns/p")
    assert "container" not in body


def test_text_lines_carry_fields(capture: tuple[io.StringIO, list[logging.Handler]]) -> None:
    stream, installed = capture
    installed.append(configure_logging(0, LogFormat.TEXT, stream))
    logging.getLogger("dracpu.test").info("pinned", extra=fields(container="c 1", cpus="2-3"))
    assert stream.getvalue().rstrip().endswith('pinned container="c 1" cpus="2-3"')


def test_configure_twice_does_not_double(
    capture: tuple[io.StringIO, list[logging.Handler]],
) -> None:
    stream, installed = capture
    installed.append(configure_logging(0, LogFormat.TEXT, stream))
    installed.append(configure_logging(0, LogFormat.TEXT, stream))
    logging.getLogger("dracpu.test").info("once")
    assert stream.getvalue().count("once") == 1


def test_repeats_thin_out_then_reset() -> None:
    now = [0.0]
    flt = RepeatFilter(window=60, clock=lambda: now[0])
    passed = []
    for i in range(1, 101):
        record = logging.LogRecord(
            "x", logging.WARNING, "f", 1, "apiserver down: %s", ("EOF",), None
        )
        now[0] += 1
        if flt.filter(record):
            passed.append((i, record.msg))
    assert [i for i, _ in passed] == [1, 2, 4, 8, 16, 32, 64]
    assert passed[1][1].endswith("(again)")
    assert passed[3][1].endswith("(3 similar lines suppressed)")
    now[0] += 1000
    record = logging.LogRecord("x", logging.WARNING, "f", 1, "apiserver down: %s", ("EOF",), None)
    assert flt.filter(record)
    assert record.msg == "apiserver down: %s"
    other = logging.LogRecord("x", logging.WARNING, "f", 1, "apiserver down: %s", ("reset",), None)
    assert flt.filter(other)


def test_api_requests_are_logged_from_v6_only(
    capture: tuple[io.StringIO, list[logging.Handler]],
) -> None:
    """httpx logs each request at INFO; at -v=0 that would be a line per API call."""
    stream, installed = capture
    installed.append(configure_logging(0, LogFormat.TEXT, stream))
    logging.getLogger("httpx").info("HTTP Request: GET https://api/x")
    logging.getLogger("httpx").warning("a warning still shows")
    assert "HTTP Request" not in stream.getvalue()
    assert "a warning still shows" in stream.getvalue()
    installed.append(configure_logging(6, LogFormat.TEXT, stream))
    logging.getLogger("httpx").info("HTTP Request: GET https://api/y")
    assert "https://api/y" in stream.getvalue()
    logging.getLogger("httpx").setLevel(logging.NOTSET)


def test_the_repeat_table_stays_small_under_lines_that_never_repeat() -> None:
    """One line per claim (a new UID each time) must not grow the table past its bound."""
    flt = RepeatFilter(max_keys=64)
    for i in range(1000):
        args = (f"claim-{i:06d}-{'x' * 200}",)
        record = logging.LogRecord("x", logging.INFO, "f", 1, "prepared %s", args, None)
        assert flt.filter(record)
    assert len(flt._seen) <= 65
    assert all(isinstance(k, int) for k in flt._seen)
    again = logging.LogRecord("x", logging.INFO, "f", 1, "prepared %s", (args[0],), None)
    assert flt.filter(again)
    assert again.msg.endswith("(again)")


def test_lines_about_different_claims_are_not_repeats() -> None:
    """The claim is a structured field, not an argument: each claim's line must pass."""
    flt = RepeatFilter()
    for uid in ("a", "b", "c", "d"):
        record = logging.LogRecord("x", logging.INFO, "f", 1, "claim prepared", (), None)
        record.__dict__.update(fields(claim=uid))
        assert flt.filter(record), uid
        assert record.msg == "claim prepared"
    same = logging.LogRecord("x", logging.INFO, "f", 1, "claim prepared", (), None)
    same.__dict__.update(fields(claim="d"))
    assert flt.filter(same)
    assert same.msg.endswith("(again)")
