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
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)  # Python warnings become log records too (one format per line)


def worker_logging_config(log_format: str, level: str) -> dict[str, Any]:
    """``logging.config.dictConfig`` for the Faust worker (which replaces the root handlers).

    The worker's log goes to stdout, as Faust's own default does."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter, "log_format": log_format}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stdout"}},
        "root": {"level": level.upper(), "handlers": ["default"]},
    }
