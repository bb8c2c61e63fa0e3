"""CpuSet: the Linux cpu list format, set algebra, ordering and error messages."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dracpu.core.cpuset import MAX_CPU_ID, CpuSet
from dracpu.errors import CpuSetParseError, InvalidValueError

# text → (canonical str, ascending ids)
PARSE_CASES = [
    pytest.param("0-3,8,10-11", "0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11], id="kernel-example"),
    pytest.param("", "", [], id="empty"),
    pytest.param("\n", "", [], id="newline-only"),
    pytest.param("   \t ", "", [], id="blanks-only"),
    pytest.param("5", "5", [5], id="single"),
    pytest.param("0\n", "0", [0], id="single-with-newline"),
    pytest.param("0-3\n", "0-3", [0, 1, 2, 3], id="sysfs-trailing-newline"),
    pytest.param(" 1 , 3 - 4 ", "1,3-4", [1, 3, 4], id="spaces-around-tokens"),
    pytest.param("7-7", "7", [7], id="one-element-range"),
    pytest.param("8,0-3,10-11", "0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11], id="unsorted"),
    pytest.param("3,2,1,0", "0-3", [0, 1, 2, 3], id="descending-singles-merge"),
    pytest.param("0-4,2-6", "0-6", [0, 1, 2, 3, 4, 5, 6], id="overlapping-ranges"),
    pytest.param("0-1,2-3", "0-3", [0, 1, 2, 3], id="adjacent-ranges-merge"),
    pytest.param("1,1,1", "1", [1], id="duplicates"),
    pytest.param(
        "16-19,56-59,36-39,76-79",
        "16-19,36-39,56-59,76-79",
        [*range(16, 20), *range(36, 40), *range(56, 60), *range(76, 80)],
        id="hybrid-pmu-list-unsorted",
    ),
    pytest.param("0,2,4,6", "0,2,4,6", [0, 2, 4, 6], id="strided"),
    pytest.param("007", "7", [7], id="leading-zeros"),
    pytest.param(f"{MAX_CPU_ID}", f"{MAX_CPU_ID}", [MAX_CPU_ID], id="max-id"),
]


@pytest.mark.parametrize(("text", "canonical", "ids"), PARSE_CASES)
def test_parse_and_format(text: str, canonical: str, ids: list[int]) -> None:
    parsed = CpuSet.parse(text)
    assert str(parsed) == canonical
    assert parsed.to_list() == ids
    assert list(parsed) == ids
    assert len(parsed) == len(ids)
    assert bool(parsed) == bool(ids)
    assert CpuSet.parse(canonical) == parsed


# text → the token the message must name
BAD_CASES = [
    pytest.param("3-0", "3-0", id="reversed-range"),
    pytest.param("1--", "1--", id="double-dash"),
    pytest.param("0,,3", "0,,3", id="empty-element"),
    pytest.param("a", "a", id="letter"),
    pytest.param("-1", "-1", id="negative"),
    pytest.param("1-", "1-", id="open-range"),
    pytest.param(",", ",", id="lone-comma"),
    pytest.param("99999999", "99999999", id="id-too-large"),
    pytest.param("0-99999999", "99999999", id="range-end-too-large"),
    pytest.param("0-3,x", "x", id="bad-second-token"),
    pytest.param("0x3", "0x3", id="hex"),
    pytest.param("1.5", "1.5", id="decimal"),
    pytest.param("0-3;5", "0-3;5", id="semicolon"),
    pytest.param("٣", "٣", id="non-ascii-digit"),
    pytest.param("1-2-3", "1-2-3", id="two-dashes"),
    pytest.param("0,", "0,", id="trailing-comma"),
]


@pytest.mark.parametrize(("text", "token"), BAD_CASES)
def test_bad_input_names_token_and_origin(text: str, token: str) -> None:
    with pytest.raises(CpuSetParseError) as info:
        CpuSet.parse(text, origin="--reserved-cpus")
    message = str(info.value)
    assert token in message
    assert "--reserved-cpus" in message
    assert info.value.origin == "--reserved-cpus"
    assert info.value.value == text
    # One line, so it fits a log line or an exit-status-2 error.
    assert "\n" not in message


def test_parse_error_is_an_invalid_value_and_value_error() -> None:
    with pytest.raises(InvalidValueError):
        CpuSet.parse("a")
    with pytest.raises(ValueError, match="'a'"):
        CpuSet.parse("a")


def test_parse_error_without_origin_has_no_leading_colon() -> None:
    with pytest.raises(CpuSetParseError) as info:
        CpuSet.parse("z")
    assert not str(info.value).startswith(":")
    assert "'z'" in str(info.value)


@pytest.mark.parametrize("cpu", [-1, MAX_CPU_ID + 1], ids=["negative", "above-max"])
def test_of_rejects_out_of_range_ids(cpu: int) -> None:
    with pytest.raises(CpuSetParseError, match=str(cpu)):
        CpuSet.of([0, cpu])


A = CpuSet.parse("0-5")
B = CpuSet.parse("4-9")

ALGEBRA_CASES = [
    pytest.param(A | B, "0-9", id="union"),
    pytest.param(A & B, "4-5", id="intersection"),
    pytest.param(A - B, "0-3", id="difference"),
    pytest.param(B - A, "6-9", id="difference-reversed"),
    pytest.param(A ^ B, "0-3,6-9", id="symmetric-difference"),
    pytest.param(A - A, "", id="self-difference-empty"),
    pytest.param(A | CpuSet(), "0-5", id="union-with-empty"),
    pytest.param(A & CpuSet(), "", id="intersection-with-empty"),
    pytest.param(CpuSet.range(3, 6), "3-6", id="range"),
    pytest.param(CpuSet.range(6, 3), "", id="range-reversed-empty"),
    pytest.param(CpuSet.of([9, 1, 5, 1]), "1,5,9", id="of-unsorted-duplicates"),
]


@pytest.mark.parametrize(("result", "expected"), ALGEBRA_CASES)
def test_algebra(result: CpuSet, expected: str) -> None:
    assert str(result) == expected


SUBSET_CASES = [
    pytest.param("0-3", "0-7", True, False, True, False, id="proper-subset"),
    pytest.param("0-7", "0-7", True, True, False, False, id="equal"),
    pytest.param("0-8", "0-7", False, True, False, True, id="proper-superset"),
    pytest.param("", "0-7", True, False, True, False, id="empty-is-subset"),
    pytest.param("", "", True, True, False, False, id="empty-empty"),
    pytest.param("1,9", "0-7", False, False, False, False, id="overlap-only"),
]


@pytest.mark.parametrize(("left", "right", "le", "ge", "lt", "gt"), SUBSET_CASES)
def test_subset_superset(left: str, right: str, le: bool, ge: bool, lt: bool, gt: bool) -> None:
    a, b = CpuSet.parse(left), CpuSet.parse(right)
    assert (a <= b) is le
    assert (a >= b) is ge
    assert (a < b) is lt
    assert (a > b) is gt


@pytest.mark.parametrize(
    ("left", "right", "disjoint"),
    [
        pytest.param("0-3", "4-7", True, id="disjoint"),
        pytest.param("0-4", "4-7", False, id="touching"),
        pytest.param("", "0-7", True, id="empty"),
    ],
)
def test_isdisjoint(left: str, right: str, disjoint: bool) -> None:
    assert CpuSet.parse(left).isdisjoint(CpuSet.parse(right)) is disjoint


def test_contains() -> None:
    s = CpuSet.parse("1,3,64,1000")
    assert 1 in s
    assert 64 in s
    assert 1000 in s
    assert 2 not in s
    assert -1 not in s
    assert "1" not in s
    assert 1.0 not in s


def test_first_and_empty_first() -> None:
    assert CpuSet.parse("7,3-4").first() == 3
    with pytest.raises(ValueError, match="empty"):
        CpuSet().first()


def test_iteration_ascending_past_machine_words() -> None:
    ids = [200, 0, 63, 64, 65, 127, 128, 8191]
    assert list(CpuSet.of(ids)) == sorted(ids)
    assert str(CpuSet.of(ids)) == "0,63-65,127-128,200,8191"


def test_value_semantics_hash_and_repr() -> None:
    assert CpuSet.parse("0-3") == CpuSet.of([3, 2, 1, 0])
    assert hash(CpuSet.parse("0-3")) == hash(CpuSet.range(0, 3))
    assert len({CpuSet.parse("1"), CpuSet.of([1]), CpuSet.parse("2")}) == 2
    assert repr(CpuSet.parse("0-2,5")) == "CpuSet('0-2,5')"


def test_immutable() -> None:
    s = CpuSet.parse("0-3")
    with pytest.raises(AttributeError):
        s.mask = 0  # type: ignore[misc]


# Properties.

ids_st = st.lists(st.integers(0, 300), max_size=60)


@given(ids_st)
def test_prop_format_parse_round_trip(ids: list[int]) -> None:
    s = CpuSet.of(ids)
    assert CpuSet.parse(str(s)) == s
    assert CpuSet.parse(f" {s}\n") == s
    assert list(s) == sorted(set(ids))
    assert len(s) == len(set(ids))


@given(ids_st)
def test_prop_format_is_canonical(ids: list[int]) -> None:
    text = str(CpuSet.of(ids))
    spans = [p.split("-") for p in text.split(",")] if text else []
    bounds = [(int(p[0]), int(p[-1])) for p in spans]
    for (_, prev_last), (first, _) in itertools.pairwise(bounds):
        assert first > prev_last + 1, "spans must be sorted and not mergeable"
    for p, (first, last) in zip(spans, bounds, strict=True):
        assert first <= last
        assert len(p) == (1 if first == last else 2)


@given(ids_st, ids_st)
def test_prop_algebra_agrees_with_python_sets(xs: list[int], ys: list[int]) -> None:
    a, b = CpuSet.of(xs), CpuSet.of(ys)
    sa, sb = set(xs), set(ys)
    assert set(a | b) == sa | sb
    assert set(a & b) == sa & sb
    assert set(a - b) == sa - sb
    assert set(a ^ b) == sa ^ sb
    assert (a <= b) == (sa <= sb)
    assert (a >= b) == (sa >= sb)
    assert (a < b) == (sa < sb)
    assert (a > b) == (sa > sb)
    assert a.isdisjoint(b) == sa.isdisjoint(sb)
    assert (a == b) == (sa == sb)
    for x in range(0, 301, 7):
        assert (x in a) == (x in sa)


@given(st.integers(0, 500), st.integers(0, 500))
def test_prop_range_matches_python_range(first: int, last: int) -> None:
    assert list(CpuSet.range(first, last)) == list(range(first, last + 1))
