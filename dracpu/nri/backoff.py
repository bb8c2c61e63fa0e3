"""Bounded exponential backoff with jitter for redialling the NRI socket."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``initial * multiplier**n`` capped at ``maximum``, each jittered to [d/2, d].

    "Equal jitter" keeps a floor of half the nominal delay, so a fleet of plugins restarted
    together spreads out without ever retrying in a tight loop.
    """

    initial: float = 0.2
    maximum: float = 30.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next_delay(self) -> float:
        """Return the next delay in seconds and advance the sequence."""
        nominal = min(self.maximum, self.initial * self.multiplier**self._attempt)
        if nominal < self.maximum:
            self._attempt += 1
        return nominal / 2 + self.rng.uniform(0, nominal / 2)

    def reset(self) -> None:
        """Start over from ``initial`` (after a connection that worked)."""
        self._attempt = 0
