"""Bounded exponential backoff with jitter: the one retry schedule of every dracpu loop.

A :class:`Backoff` is a value; :meth:`Backoff.delay` maps an attempt number (0 = first retry) to a
delay in seconds: ``initial * factor**attempt`` capped at ``maximum``, then spread by ±``jitter``
(a fraction) so that many nodes restarting together do not hit a peer in lock-step. Loops that
retry until something works keep a :class:`BackoffCounter`, which remembers the attempt number
and starts over after a success. :class:`RetryLoop` puts a counter together with the one
log-level rule of every forever-loop (first failure WARNING, repeats rate-limited, recovery INFO).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import trio

__all__ = ["Backoff", "BackoffCounter", "RetryLoop"]


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
        self.rng = rng

    def next_delay(self) -> float:
        """The delay before the next retry; advances the attempt number."""
        delay = self.schedule.delay(self.attempt, self.rng)
        self.attempt = min(self.attempt + 1, 64)
        return delay

    def reset(self) -> None:
        """Start over from ``initial`` (after an attempt that worked)."""
        self.attempt = 0


class RetryLoop:
    """The failure bookkeeping of one forever-loop: its backoff and the one log-level rule.

    Every retry loop of dracpu (the API client's request retries, the reflector, the slice
    publisher, the NRI redial) reports each failure with :meth:`failed` and each success with
    :meth:`succeeded`. The rule, the same everywhere:

    * the first failure of a streak (a run of failures ended by a success) is logged at
      ``level`` (WARNING unless the caller says otherwise), with the delay before the next try;
    * a failure more severe than any shown in the streak is logged at once, like a first one;
    * repeats within the streak are logged at that level at most once per ``repeat_every``
      seconds, an interval that doubles each time up to ``repeat_max``, saying how many failures
      it covers; all others go to DEBUG. So no line repeats forever at a visible level;
    * the first success after a failure logs one INFO line ("recovered after N failures").

    The schedule (:class:`BackoffCounter`) advances with each failure and starts over on success.
    ``clock`` (seconds) defaults to trio's clock, so trio's mock clock drives the rate limit in
    tests; the loop sleeps with :meth:`sleep`, which can be cut short by an event.
    """

    def __init__(
        self,
        what: str,
        schedule: Backoff,
        logger: logging.Logger,
        *,
        rng: random.Random | None = None,
        repeat_every: float = 30.0,
        repeat_max: float = 3600.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.what = what
        self.counter = BackoffCounter(schedule, rng)
        self.log = logger
        self.failures = 0
        self.total_failures = 0
        self.last_error: str | None = None
        self._repeat_every = repeat_every
        self._repeat_max = repeat_max
        self._clock = clock or trio.current_time
        self._next_visible = 0.0
        self._interval = repeat_every
        self._suppressed = 0
        self._shown = False
        self._shown_level = logging.NOTSET

    @property
    def schedule(self) -> Backoff:
        """The delay schedule this loop follows."""
        return self.counter.schedule

    def failed(
        self,
        error: object,
        *,
        level: int = logging.WARNING,
        schedule: Backoff | None = None,
        delay: float | None = None,
        retry_now: bool = False,
    ) -> float:
        """Record one failure, log it by the rule, and return the delay before the next try.

        ``schedule`` picks another delay schedule for this failure (the attempt number is the
        streak's); ``delay`` overrides the computed delay (a server's Retry-After).
        ``retry_now`` marks a failure the loop retries at once (an expected hiccup, such as a
        watch that timed out quietly): it counts in the streak and advances the schedule, logs
        only at DEBUG and returns 0.
        """
        now = self._clock()
        if schedule is None:
            wait = self.counter.next_delay()
        else:
            wait = schedule.delay(self.counter.attempt, self.counter.rng)
            self.counter.attempt = min(self.counter.attempt + 1, 64)
        if delay is not None:
            wait = delay
        self.failures += 1
        self.total_failures += 1
        self.last_error = str(error)
        if retry_now:
            self.log.debug("%s failed: %s; retrying at once", self.what, error)
            return 0.0
        if not self._shown or level > self._shown_level:
            self._shown = True
            self._shown_level = level
            self._interval = self._repeat_every
            self._next_visible = now + self._interval
            self._suppressed = 0
            self.log.log(level, "%s failed: %s; retrying in %.2f s", self.what, error, wait)
        elif now >= self._next_visible:
            self.log.log(
                level,
                "%s still failing (%d failures, %d not shown): %s; retrying in %.2f s",
                self.what,
                self.failures,
                self._suppressed,
                error,
                wait,
            )
            self._interval = min(self._interval * 2, self._repeat_max)
            self._next_visible = now + self._interval
            self._suppressed = 0
        else:
            self._suppressed += 1
            self.log.debug(
                "%s failed (attempt %d): %s; retrying in %.2f s",
                self.what,
                self.failures,
                error,
                wait,
            )
        return wait

    def succeeded(self) -> None:
        """Record a success: log recovery (INFO) after a streak and restart the schedule."""
        if self._shown:
            self.log.info("%s recovered after %d failure(s)", self.what, self.failures)
        self._shown = False
        self._shown_level = logging.NOTSET
        self.failures = 0
        self.last_error = None
        self.counter.reset()

    async def sleep(self, delay: float, *, wake: trio.Event | None = None) -> None:
        """Sleep ``delay`` seconds, or until ``wake`` is set (whichever comes first).

        Cancellation: propagates at once; nothing to undo.
        """
        with trio.move_on_after(delay):
            if wake is None:
                await trio.sleep_forever()
            else:
                await wake.wait()
