"""Polling helper for tests that wait on state changed by another task."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def wait_for(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
    """Poll ``predicate`` every 10 ms (trio time) until true; TooSlowError after ``seconds``."""
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - state lives in another task, not an Event
            await trio.sleep(0.01)
