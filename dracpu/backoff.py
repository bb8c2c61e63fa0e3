"""Bounded exponential backoff with jitter: the one retry schedule of every dracpu loop.

A :class:`Backoff` is a value; :meth:`Backoff.delay` maps an attempt number (0 = first retry) to a
delay in seconds: ``initial * factor**attempt`` capped at ``maximum``, then spread by ±``jitter``
(a fraction) so that many nodes restarting together do not hit a peer in lock-step. Loops that
retry until something works keep a :class:`BackoffCounter`, which remembers the attempt number
and starts over after a success. Nothing here sleeps; callers sleep the returned delay.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff", "BackoffCounter"]


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

    def counter(self, rng: random.Random | None = None) -> BackoffCounter:
        """A fresh attempt counter over this schedule."""
        return BackoffCounter(self, rng)


class BackoffCounter:
    """The attempt number of one retry loop: each :meth:`next_delay` waits longer, up to the
    schedule's maximum, until :meth:`reset` after a success."""

    def __init__(self, schedule: Backoff, rng: random.Random | None = None) -> None:
        self.schedule = schedule
        self.attempt = 0
        self._rng = rng

    def next_delay(self) -> float:
        """The delay before the next retry; advances the attempt number."""
        delay = self.schedule.delay(self.attempt, self._rng)
        self.attempt = min(self.attempt + 1, 64)
        return delay

    def reset(self) -> None:
        """Start over from ``initial`` (after an attempt that worked)."""
        self.attempt = 0
