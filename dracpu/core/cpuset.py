"""An immutable set of CPU ids that round-trips the Linux cpu list format (``0-3,8,10-11``).

Backed by an int bitmask so that union, intersection, difference and size are single integer
operations: the allocator does thousands of them per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dracpu.errors import CpuSetParseError, shown

MAX_CPU_ID = 65535
"""Largest CPU id accepted when parsing (Linux NR_CPUS tops out at 8192); bounds memory."""


@dataclass(frozen=True, slots=True)
class CpuSet:
    """A set of CPU ids. Iteration is ascending; ``str()`` is the canonical Linux list."""

    mask: int = 0

    @classmethod
    def of(cls, cpus: Iterable[int]) -> CpuSet:
        """Build a set from CPU ids (each ``0 ≤ id ≤ MAX_CPU_ID``)."""
        mask = 0
        for cpu in cpus:
            if not 0 <= cpu <= MAX_CPU_ID:
                raise CpuSetParseError(f"CPU id {cpu} out of range 0-{MAX_CPU_ID}", value=cpu)
            mask |= 1 << cpu
        return cls(mask)

    @classmethod
    def range(cls, first: int, last: int) -> CpuSet:
        """The CPUs ``first..last`` inclusive."""
        if first > last:
            return cls()
        return cls(((1 << (last - first + 1)) - 1) << first)

    @classmethod
    def parse(cls, text: str, *, origin: str = "") -> CpuSet:
        """Parse a Linux cpu list such as ``"0-3,8\\n"``; empty or blank text is the empty set.

        Raises ``CpuSetParseError`` naming the bad token and ``origin`` (e.g. a file or flag).
        """
        stripped = text.strip()
        if not stripped:
            return cls()
        mask = 0
        for raw in stripped.split(","):
            token = raw.strip()
            if not token:
                raise CpuSetParseError(
                    f"empty element in cpu list {shown(stripped)}", value=text, origin=origin
                )
            first_s, sep, last_s = token.partition("-")
            first = _parse_id(first_s, token, text, origin)
            last = _parse_id(last_s, token, text, origin) if sep else first
            if last < first:
                raise CpuSetParseError(
                    f"invalid range {shown(token)} in cpu list {shown(stripped)}",
                    value=text,
                    origin=origin,
                )
            mask |= ((1 << (last - first + 1)) - 1) << first
        return cls(mask)

    def __len__(self) -> int:
        return self.mask.bit_count()

    def __bool__(self) -> bool:
        return self.mask != 0

    def __iter__(self) -> Iterator[int]:
        mask = self.mask
        while mask:
            low = mask & -mask
            yield low.bit_length() - 1
            mask ^= low

    def __contains__(self, cpu: object) -> bool:
        return isinstance(cpu, int) and cpu >= 0 and bool(self.mask >> cpu & 1)

    def __or__(self, other: CpuSet) -> CpuSet:
        return CpuSet(self.mask | other.mask)

    def __and__(self, other: CpuSet) -> CpuSet:
        return CpuSet(self.mask & other.mask)

    def __sub__(self, other: CpuSet) -> CpuSet:
        return CpuSet(self.mask & ~other.mask)

    def __xor__(self, other: CpuSet) -> CpuSet:
        return CpuSet(self.mask ^ other.mask)

    def __le__(self, other: CpuSet) -> bool:
        return self.mask & ~other.mask == 0

    def __ge__(self, other: CpuSet) -> bool:
        return other.mask & ~self.mask == 0

    def __lt__(self, other: CpuSet) -> bool:
        return self.mask != other.mask and self <= other

    def __gt__(self, other: CpuSet) -> bool:
        return self.mask != other.mask and self >= other

    def isdisjoint(self, other: CpuSet) -> bool:
        """True when the sets share no CPU."""
        return self.mask & other.mask == 0

    def first(self) -> int:
        """The lowest CPU id; raises ``ValueError`` on the empty set."""
        if not self.mask:
            raise ValueError("first() of an empty CpuSet")
        return (self.mask & -self.mask).bit_length() - 1

    def to_list(self) -> list[int]:
        """The CPU ids in ascending order."""
        return list(self)

    def __str__(self) -> str:
        # One step per run of consecutive CPUs, not per CPU: prepare prints every claim's set.
        parts: list[str] = []
        mask = self.mask
        while mask:
            first = (mask & -mask).bit_length() - 1
            shifted = mask >> first
            length = (shifted ^ (shifted + 1)).bit_length() - 1  # trailing ones
            parts.append(_span(first, first + length - 1))
            mask &= ~(((1 << length) - 1) << first)
        return ",".join(parts)

    def __repr__(self) -> str:
        return f"CpuSet({str(self)!r})"


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def _parse_id(digits: str, token: str, text: str, origin: str) -> int:
    digits = digits.strip()
    if not digits.isascii() or not digits.isdigit():
        raise CpuSetParseError(
            f"invalid element {shown(token)} in cpu list {shown(text.strip())}",
            value=text,
            origin=origin,
        )
    # Past a few digits the id is out of range anyway; int() of thousands would raise ValueError.
    value = int(digits) if len(digits.lstrip("0")) <= 6 else MAX_CPU_ID + 1
    if value > MAX_CPU_ID:
        shown_id = digits if len(digits) <= 12 else f"{digits[:12]}... ({len(digits)} digits)"
        raise CpuSetParseError(
            f"CPU id {shown_id} out of range 0-{MAX_CPU_ID}", value=text, origin=origin
        )
    return value
