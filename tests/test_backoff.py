"""The shared retry schedule: bounded, jittered, growing, and reset after a success."""

from __future__ import annotations

import random

import pytest

from dracpu.backoff import Backoff


def test_delays_grow_within_jitter_and_never_pass_the_maximum() -> None:
    schedule = Backoff(initial=0.2, maximum=3.0, factor=2.0, jitter=0.5)
    counter = schedule.counter(random.Random(1))
    delays = [counter.next_delay() for _ in range(100)]
    nominal = [min(3.0, 0.2 * 2**i) for i in range(100)]
    assert all(n * 0.5 <= d <= min(3.0, n * 1.5) for d, n in zip(delays, nominal, strict=True))
    assert max(delays) <= 3.0
    assert min(delays[10:]) >= 1.5  # it does not fall back to a tight loop


def test_reset_starts_over() -> None:
    counter = Backoff(initial=0.2, maximum=30.0, jitter=0.2).counter(random.Random(3))
    for _ in range(10):
        counter.next_delay()
    counter.reset()
    assert counter.next_delay() <= 0.24


def test_same_seed_same_delays() -> None:
    schedule = Backoff()
    a = [schedule.delay(i, random.Random(5)) for i in range(8)]
    b = [schedule.delay(i, random.Random(5)) for i in range(8)]
    assert a == b


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"initial": 5, "maximum": 1}, {"factor": 0.5}, {"jitter": 1.0}],
    ids=["zero-initial", "initial>max", "shrinking", "full-jitter"],
)
def test_bad_schedules_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(**kwargs)
