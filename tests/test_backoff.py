"""The shared retry schedule: bounded, jittered, growing, and reset after a success."""

from __future__ import annotations

import logging
import random

import pytest

from dracpu.backoff import Backoff, RetryLoop


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


def test_retry_loop_log_rule(caplog: pytest.LogCaptureFixture) -> None:
    """First failure WARNING, repeats rate-limited with a doubling interval, recovery INFO."""
    now = [0.0]
    logger = logging.getLogger("dracpu.test.retry")
    caplog.set_level(logging.DEBUG, logger="dracpu.test.retry")
    loop = RetryLoop(
        "thing", Backoff(initial=1.0, maximum=4.0, jitter=0.0), logger, repeat_every=10.0,
        clock=lambda: now[0],
    )  # fmt: skip
    delays = []
    for _ in range(200):  # one failure per second for 200 s
        delays.append(loop.failed(OSError("refused")))
        now[0] += 1.0
    visible = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert delays[:4] == [1.0, 2.0, 4.0, 4.0]
    assert visible[0].levelname == "WARNING"
    assert "thing failed: refused" in visible[0].getMessage()
    # 10, 20, 40, 80 s apart: 1 + 4 lines over 200 s, not 200.
    assert len(visible) == 5
    assert "still failing (11 failures, 9 not shown)" in visible[1].getMessage()
    assert loop.failures == 200
    caplog.clear()
    loop.succeeded()
    loop.succeeded()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "thing recovered after 200 failure(s)")
    ]
    assert loop.failed("again") == 1.0  # the schedule starts over


def test_retry_now_failures_are_quiet_but_count(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("dracpu.test.retry2")
    caplog.set_level(logging.INFO, logger="dracpu.test.retry2")
    loop = RetryLoop("w", Backoff(initial=1.0, maximum=8.0, jitter=0.0), logger, clock=lambda: 0)
    assert loop.failed("hiccup", retry_now=True) == 0.0
    assert loop.failed("hiccup", retry_now=True) == 0.0
    assert loop.failed("hiccup") == 4.0
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    loop.succeeded()
    assert loop.failures == 0


def test_a_worse_failure_is_shown_at_once(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("dracpu.test.retry3")
    caplog.set_level(logging.INFO, logger="dracpu.test.retry3")
    loop = RetryLoop("p", Backoff(), logger, clock=lambda: 0)
    loop.failed("raced", level=logging.INFO)
    loop.failed("raced", level=logging.INFO)
    loop.failed("unreachable")
    loop.failed("unreachable")
    assert [(r.levelname, r.getMessage().split(";")[0]) for r in caplog.records] == [
        ("INFO", "p failed: raced"),
        ("WARNING", "p failed: unreachable"),
    ]
