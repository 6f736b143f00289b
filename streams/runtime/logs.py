"""Log lines for people (``text``) or for log pipelines (``json``), per ``RETENTION_LOG_FORMAT``.

A JSON line has ``ts`` (UTC, ISO 8601, milliseconds), ``level``, ``logger`` and ``message``,
then whatever the code passed as ``extra`` (e.g. ``topic``, ``partition``, ``offset``) and
``exc_info`` for a traceback, so an operator can filter with ``jq 'select(.level == "ERROR")'``:

>>> import io, json
>>> out = io.StringIO()
>>> handler = logging.StreamHandler(out)
>>> handler.setFormatter(formatter("json"))
>>> log = logging.getLogger("doctest.logs")
>>> log.addHandler(handler)
>>> log.warning("dead-lettered %s", "clicks[3]@9", extra={"topic": "clicks", "partition": 3, "offset": 9})
>>> line = json.loads(out.getvalue())
>>> [line[k] for k in ("level", "logger", "message", "topic", "partition", "offset")]
['WARNING', 'doctest.logs', 'dead-lettered clicks[3]@9', 'clicks', 3, 9]
>>> list(line)[0], line["ts"].endswith("Z")
('ts', True)
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OUR_LOGGERS = "streams"
REPEAT_INTERVAL_S = 30.0


class RepeatLimiter(logging.Filter):
    """At most one line per ``interval_s`` for each message template of a client library.

    aiokafka, Faust and mode log the same connection error for every fetch, metadata refresh
    and node while a broker is away: thousands of lines a minute that bury the one line saying
    what to do. A repeat of a WARNING or ERROR template (logger + format string, not the
    arguments) from a logger outside ``streams`` is dropped within the interval; the next line
    let through says how many were dropped. Our own lines and CRITICAL ones always pass.

    >>> limiter = RepeatLimiter(interval_s=30, clock=iter([0, 1, 2, 40]).__next__)
    >>> def rec(msg):
    ...     return logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, msg, ("node 1",), None)
    >>> [limiter.filter(r) for r in (rec("Failed fetch from %s"),) * 4]
    [True, False, False, True]
    """

    def __init__(self, interval_s: float = REPEAT_INTERVAL_S, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not logging.WARNING <= record.levelno < logging.CRITICAL or record.name.split(".")[0] == OUR_LOGGERS:
            return True
        key = (record.name, record.msg)
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{record.msg} ({last[1]} similar lines dropped in the last {now - last[0]:.0f} s)"
        if len(self._seen) > 1000:  # templates are few; arguments folded into the message are not
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


class _JsonLines(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``RETENTION_LOG_FORMAT`` (``text`` or ``json``)."""
    if log_format == "json":
        return _JsonLines(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        )
    return logging.Formatter(TEXT_FORMAT)


def configure(log_format: str, level: str) -> None:
    """Root logging of a command: one stream handler on stderr in the chosen format."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RepeatLimiter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)  # Python warnings become log records too (one format per line)


def worker_logging_config(log_format: str, level: str) -> dict[str, Any]:
    """``logging.config.dictConfig`` for the Faust worker (which replaces the root handlers).

    The worker's log goes to stdout, as Faust's own default does."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter, "log_format": log_format}},
        "filters": {"repeats": {"()": RepeatLimiter}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stdout",
                                 "filters": ["repeats"]}},
        "root": {"level": level.upper(), "handlers": ["default"]},
    }
