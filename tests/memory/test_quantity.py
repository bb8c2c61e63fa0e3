"""Quantities: exact parsing, and the API server's canonical BinarySI form for byte counts."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dracpu.core.quantity import format_bytes, parse_bytes, parse_quantity
from dracpu.errors import InvalidValueError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("256Mi", 256 * 2**20),
        ("1.5Gi", 3 * 2**29),
        ("1G", 10**9),
        ("1e3", 1000),
        ("500m", Fraction(1, 2)),
        ("4096", 4096),
        (".5Ki", 512),
    ],
)
def test_parse(text: str, value: Fraction | int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Mi", "1 Mi", "1MiB", "1.2.3", "--1", "1Mi "])
def test_parse_rejects_and_names_the_text(text: str) -> None:
    with pytest.raises(InvalidValueError, match="invalid quantity"):
        parse_quantity(text, origin="claim x")


@pytest.mark.parametrize(
    ("text", "problem"), [("500m", "not a whole number"), ("-1Ki", "negative")]
)
def test_parse_bytes_rejects(text: str, problem: str) -> None:
    with pytest.raises(InvalidValueError, match=problem):
        parse_bytes(text)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (500, "500"),
        (1000, "1k"),
        (1023, "1023"),
        (1024, "1Ki"),
        (1536, "1536"),
        (16 * 2**20, "16Mi"),
        (1536 * 2**20, "1536Mi"),
        (5 * 2**30, "5Gi"),
        (32372996 * 1024, "32372996Ki"),
        (2**70, "1024Ei"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@given(st.integers(min_value=0, max_value=2**72))
def test_format_round_trips(n: int) -> None:
    assert parse_bytes(format_bytes(n)) == n
