"""Quantiles as the benches print them (nearest rank), shared by the recipes that import it."""

from __future__ import annotations

__all__ = ["ms", "pct"]


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(values: list[float], digits: int = 1) -> str:
    """``p50 X ms, p99 Y ms`` of ``values`` in seconds, with ``digits`` decimals."""
    return (
        f"p50 {1000 * pct(values, 0.5):.{digits}f} ms, p99 {1000 * pct(values, 0.99):.{digits}f} ms"
    )
