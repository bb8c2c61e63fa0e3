"""Rate-limited warnings: a peer that repeats a fault must not be able to flood the log."""

from __future__ import annotations

import logging
import math
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Logs a warning per key at most once per ``period`` seconds, counting the ones it drops,
    so a peer that repeats a fault cannot flood the log."""

    def __init__(self, log: logging.Logger, period: float = 10.0) -> None:
        self._log = log
        self._period = period
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last, dropped = self._last.get(key, (-math.inf, 0))
        if now - last < self._period:
            self._last[key] = (last, dropped + 1)
            return
        if len(self._last) > 256:
            self._last.clear()
        self._last[key] = (now, 0)
        suffix = f" ({dropped} more like it not logged)" if dropped else ""
        self._log.warning(msg + suffix, *args)
