"""Kubernetes resource quantities (``"256Mi"``, ``"1.5G"``, ``"1e3"``) as exact values.

The one quantity parser of dracpu (claims, slices, memory). The memory driver reads quantities
from claims (``consumedCapacity``) and writes them into slices and CDI env, so it needs both
directions, exactly: parsing gives a ``Fraction`` (no
float rounding), and :func:`format_bytes` prints an integer byte count the way the API server's
canonical ``BinarySI`` form does (``16777216`` → ``"16Mi"``, ``1536`` → ``"1536"``), which is
also what upstream ``dra.memory`` writes into its env variables.
"""

from __future__ import annotations

import re
from fractions import Fraction

from dracpu.errors import InvalidValueError, shown

__all__ = ["format_bytes", "parse_bytes", "parse_quantity"]

_QUANTITY = re.compile(
    r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))"
    r"(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?"
)
_SUFFIX = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
_BINARY = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
_DECIMAL = {0: "", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E"}


_MAX_EXPONENT = 30
_MAX_CHARS = 64
"""Longer than any real quantity (int64 digits plus a suffix); bounds the arithmetic."""
"""``1e400`` would make a huge exact Fraction; no real quantity needs more than this."""


def parse_quantity(text: object, *, origin: str = "") -> Fraction:
    """The exact value of a Kubernetes quantity string (``"4"``, ``"4000m"``, ``"1Ki"``, ``"1e3"``).

    The one quantity parser of dracpu (claims, slices, memory). The syntax is the API server's:
    no spaces, one suffix or one exponent. Raises :class:`InvalidValueError` naming the text and
    ``origin``; a non-string (a JSON number where a quantity belongs) is refused too.
    """
    if not isinstance(text, str):
        raise InvalidValueError(
            f"invalid quantity {shown(text)}: not a string", value=text, origin=origin
        )
    if len(text) > _MAX_CHARS:  # int() of thousands of digits raises ValueError.
        raise InvalidValueError(
            f"invalid quantity {shown(text)}: longer than {_MAX_CHARS} characters",
            value=text,
            origin=origin,
        )
    m = _QUANTITY.fullmatch(text)
    if m is None:
        raise InvalidValueError(f"invalid quantity {shown(text)}", value=text, origin=origin)
    number, exponent, suffix = m.groups()
    value = Fraction(number)
    if exponent:
        power = int(exponent[1:])
        if abs(power) > _MAX_EXPONENT:
            raise InvalidValueError(
                f"invalid quantity {text!r}: out of range", value=text, origin=origin
            )
        value *= Fraction(10) ** power
    elif suffix:
        value *= _SUFFIX[suffix]
    return value


def parse_bytes(text: str, *, origin: str = "") -> int:
    """A quantity that must be a whole, non-negative number of bytes (``"1.5Ki"`` is 1536)."""
    value = parse_quantity(text, origin=origin)
    if value.denominator != 1:
        raise InvalidValueError(
            f"quantity {text!r} is not a whole number of bytes", value=text, origin=origin
        )
    if value < 0:
        raise InvalidValueError(f"quantity {text!r} is negative", value=text, origin=origin)
    return int(value)


def format_bytes(n: int) -> str:
    """``n`` in the API server's canonical BinarySI form: the largest binary suffix dividing it
    exactly; values below 1024 fall back to the decimal form (``1000`` → ``"1k"``), as the API
    server does."""
    if n < 0:
        raise InvalidValueError(f"negative byte count {n}", value=n, origin="quantity")
    if n < 1024:
        if n == 0:
            return "0"
        exponent = 0
        while n % 10 == 0 and exponent < 18:
            n //= 10
            exponent += 1
        while exponent % 3:
            n *= 10
            exponent -= 1
        return f"{n}{_DECIMAL[exponent]}"
    power = 0
    while n % 1024 == 0 and power < len(_BINARY) - 1:
        n //= 1024
        power += 1
    return f"{n}{_BINARY[power]}"
