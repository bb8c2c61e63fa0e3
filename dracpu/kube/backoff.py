"""Bounded exponential backoff with jitter, shared by the client's retries and the long loops.

A :class:`Backoff` is a value; :meth:`Backoff.delay` maps an attempt number (0 = first retry) to a
delay in seconds: ``initial * factor**attempt`` capped at ``maximum``, then spread by ±``jitter``
(a fraction) so that many nodes restarting together do not hit the API server in lock-step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay schedule ``min(initial * factor**n, maximum)`` with ±``jitter`` spread."""

    initial: float = 0.2
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum) or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"bad backoff {self!r}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based); never above ``maximum``."""
        base = self.initial * self.factor ** min(max(attempt, 0), 64)
        base = min(base, self.maximum)
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return min(self.maximum, max(0.0, base * (1.0 + spread)))
