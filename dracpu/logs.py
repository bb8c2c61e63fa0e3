"""Logging set-up: klog-style verbosity, text or JSON lines, structured fields, no endless repeats.

- **Verbosity** follows klog and upstream's guidelines (``docs/dev/logging.md`` of
  dra-driver-cpu): V(0) always shown, V(2) normal operation and decisions, V(4) allocation
  internals, V(6) debugging. ``-v N`` shows levels up to N. Python levels map as
  ``V(n) = INFO - n``, so ``log.log(V(2), ...)`` and plain ``log.info`` (V0) mix freely;
  WARNING and ERROR are always shown.
- **Fields.** A line about a claim or container passes ``extra=fields(claim=..., pod=...,
  container=...)``; the text format appends ``key="value"`` pairs (klog's structured style), the
  JSON format puts them at the top level of the object.
- **No line repeats forever.** :class:`RepeatFilter` lets the first occurrence of a message
  through, then the 2nd, 4th, 8th ... within a window, each saying how many were suppressed,
  so a failure that persists for hours logs a few dozen lines instead of one per retry.
"""

from __future__ import annotations

import enum
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

__all__ = ["LogFormat", "RecentLines", "RepeatFilter", "V", "configure_logging", "fields"]

_FIELDS = "dracpu_fields"


def V(level: int) -> int:
    """The Python log level of klog verbosity ``level`` (V(0) is INFO)."""
    return logging.INFO - max(0, min(level, 9))


def fields(**values: object) -> dict[str, Any]:
    """``extra=`` for a log call: structured fields shown with the line (None values dropped)."""
    return {_FIELDS: {k: v for k, v in values.items() if v is not None}}


class LogFormat(enum.StrEnum):
    """``--log-format``: klog-like text, or one JSON object per line."""

    TEXT = "text"
    JSON = "json"


def _level_name(record: logging.LogRecord) -> str:
    if record.levelno >= logging.WARNING:
        return record.levelname
    return "INFO" if record.levelno == logging.INFO else f"V{logging.INFO - record.levelno}"


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%H:%M:%S", time.gmtime(record.created))
        letter = record.levelname[0] if record.levelno >= logging.WARNING else "I"
        line = f"{letter}{when}.{int(record.msecs):03d} {record.name}] "
        line += record.getMessage()
        for key, value in getattr(record, _FIELDS, {}).items():
            line += f" {key}={json.dumps(str(value))}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": _level_name(record),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in getattr(record, _FIELDS, {}).items():
            body.setdefault(key, value if isinstance(value, int | float | bool) else str(value))
        if record.exc_info:
            body["error"] = self.formatException(record.exc_info)
        return json.dumps(body, sort_keys=False)


class RepeatFilter(logging.Filter):
    """Thin out identical lines: the 1st, 2nd, 4th, 8th ... occurrence within ``window`` s.

    Identity is (logger, level, message template, arguments, structured fields): "claim
    prepared" for two claims is two lines, not a repeat. A suppressed run is reported on
    the next line that passes (``(N similar lines suppressed)``). After ``window`` seconds of
    silence the count starts over. The table is bounded (oldest keys dropped first) and holds
    a 64-bit hash of each identity, not its text: most lines name a claim or a container and
    never repeat, and under churn the full keys made the table the largest thing the daemon
    grew (about 0.5 KiB a line until it was full). Two identities with one hash would share a
    count, which at most thins one line too many.
    """

    def __init__(
        self, window: float = 600.0, max_keys: int = 1024, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__()
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        self._seen: dict[int, tuple[int, float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            fields_ = getattr(record, _FIELDS, None)
            key = hash((record.name, record.levelno, record.msg, repr(record.args), repr(fields_)))
        except Exception:
            return True
        now = self._clock()
        count, last = self._seen.pop(key, (0, now))
        if now - last > self._window:
            count = 0
        count += 1
        self._seen[key] = (count, now)
        if len(self._seen) > self._max_keys:
            del self._seen[next(iter(self._seen))]
        if count & (count - 1):  # not a power of two: suppress
            return False
        if count > 1:
            record.msg = f"{record.msg} ({count // 2 - 1} similar lines suppressed)"
            if count == 2:
                record.msg = str(record.msg).replace(" (0 similar lines suppressed)", " (again)")
        return True


class RecentLines(logging.Handler):
    """The last ``size`` formatted lines in memory, for ``/logs`` and ``dracpu gather``."""

    def __init__(self, size: int = 2000) -> None:
        super().__init__()
        self._lines: deque[str] = deque(maxlen=size)
        self.setFormatter(_TextFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)

    def text(self) -> str:
        """The kept lines, oldest first, newline-terminated."""
        return "".join(f"{line}\n" for line in list(self._lines))


def configure_logging(
    verbosity: int = 0,
    fmt: LogFormat = LogFormat.TEXT,
    stream: IO[str] | None = None,
    recent: RecentLines | None = None,
) -> logging.Handler:
    """Route every ``dracpu`` (and library) log line to ``stream`` (stderr) in ``fmt``.

    ``recent``, when given, also keeps the last lines in memory (after the same repeat
    thinning). Returns the installed stream handler so callers (tests) can remove it again.
    Replaces handlers installed by an earlier call, so calling twice does not double lines.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt is LogFormat.JSON else _TextFormatter())
    handler.addFilter(RepeatFilter())
    handler.set_name("dracpu")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() in ("dracpu", "dracpu-recent")]:
        root.removeHandler(old)
    root.addHandler(handler)
    if recent is not None:
        recent.set_name("dracpu-recent")
        recent.addFilter(RepeatFilter())
        root.addHandler(recent)
    root.setLevel(V(verbosity))
    for noisy in ("hpack", "h2", "httpcore", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # httpx logs every API request at INFO; like client-go, show them from -v=6 on only.
    logging.getLogger("httpx").setLevel(logging.NOTSET if verbosity >= 6 else logging.WARNING)
    return handler
