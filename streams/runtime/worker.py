"""The worker process around the Faust app: it waits for the brokers before starting, and a
stop signal ends it within its grace period whatever it was doing.

Faust's worker gives up at once when no broker answers at start (aiokafka's "Unable to
bootstrap", exit 1 in ~4 s), which turns a broker started a little after its workers (a
compose file, a cluster restart) into a crash loop. So the worker first asks for the
cluster's metadata until the brokers answer, one log line per attempt.

Faust's graceful stop awaits its services one after another (agents, the consumer's last
commit, the producer's flush), and any of them can wait on a broker that is gone or on a
record that never comes. An orchestrator then kills the worker at the end of its grace
period without a word. So the first stop signal arms a deadline: past it, the worker logs
what its main thread was doing and exits with :data:`EXIT_SHUTDOWN_OVERDUE`. Nothing is lost:
offsets are committed only as far as records were processed, so the rest is read again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

import faust

from streams.runtime.kafka import admin
from streams.runtime.settings import Settings

log = logging.getLogger(__name__)

#: Exit code of a worker whose graceful stop outlived RETENTION_SHUTDOWN_TIMEOUT_S.
EXIT_SHUTDOWN_OVERDUE = 3
#: First pause between two attempts to reach the brokers (it doubles up to the maximum).
FIRST_RETRY_S = 0.5


def retry_pause(attempt: int, longest: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1, 2, ...): doubling, capped.

    >>> [retry_pause(n, 3.0) for n in (1, 2, 3, 4)]
    [0.5, 1.0, 2.0, 3.0]
    """
    return min(FIRST_RETRY_S * 2 ** (attempt - 1), longest)


def wait_for_brokers(settings: Settings) -> bool:
    """Until the brokers answer a metadata request (True), or RETENTION_BROKER_WAIT_S passed
    (False). One log line per failed attempt; the client's own logs are silenced (librdkafka
    would print each refused connection)."""
    client = admin(settings, log_level=0)
    started, attempt = time.monotonic(), 0
    while True:
        attempt += 1
        try:
            client.list_topics(timeout=min(5.0, settings.broker_retry_max_s))
            if attempt > 1:
                log.info("brokers at %s answer (attempt %d)", settings.bootstrap_servers, attempt)
            return True
        except Exception as exc:  # KafkaException: transport failure, timeout
            waited = time.monotonic() - started
            pause = retry_pause(attempt, settings.broker_retry_max_s)
            if settings.broker_wait_s and waited + pause > settings.broker_wait_s:
                log.error("no broker answered at %s within %.0f s (RETENTION_BROKER_WAIT_S); giving up: %s",
                          settings.bootstrap_servers, settings.broker_wait_s, _reason(exc))
                return False
            log.warning("no broker answers at %s yet (attempt %d, %.0f s so far: %s); next attempt in %.1f s",
                        settings.bootstrap_servers, attempt, waited, _reason(exc), pause)
            time.sleep(pause)


def _reason(exc: BaseException) -> str:
    error = exc.args[0] if exc.args else exc
    return getattr(error, "str", lambda: str(error))()


class RetentionWorker(faust.Worker):
    """Faust's worker, with a deadline on its graceful stop (RETENTION_SHUTDOWN_TIMEOUT_S)."""

    def __init__(self, app: faust.App, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.shutdown_timeout_s = settings.shutdown_timeout_s
        self._deadline: threading.Timer | None = None

    def install_signal_handlers(self) -> None:
        """Faust's handlers run on the event loop; a Python-level handler is added for the
        deadline, which must start even while the loop is busy (asyncio still sees the signal:
        the interpreter writes it to the loop's wake-up fd whatever the Python handler is)."""
        super().install_signal_handlers()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._arm_deadline)

    def _arm_deadline(self, signum: int, frame: Any) -> None:
        operations = getattr(self.app, "operations", None)
        if operations is not None:  # /health/ready answers 503 from now on
            operations.stopping = signal.Signals(signum).name
        if self._deadline is None:
            self._deadline = threading.Timer(self.shutdown_timeout_s, self._overdue, args=(signal.Signals(signum).name,))
            self._deadline.daemon = True
            self._deadline.start()

    def _overdue(self, name: str) -> None:
        log.critical("the graceful stop after %s did not finish within %.0f s (RETENTION_SHUTDOWN_TIMEOUT_S); exiting with "
                     "code %d: records not committed are read again after the restart. Waiting were:\n%s",
                     name, self.shutdown_timeout_s, EXIT_SHUTDOWN_OVERDUE, self._waiting())
        logging.shutdown()  # flush the handlers: os._exit skips them
        os._exit(EXIT_SHUTDOWN_OVERDUE)

    def _waiting(self) -> str:
        """Where the main thread and the event loop's tasks are suspended (read from this
        thread while the loop runs: a best effort, for the operator's log line)."""
        main = sys._current_frames().get(threading.main_thread().ident or 0)
        lines = ["main thread: " + "".join(traceback.format_stack(main, limit=-1)).strip() if main is not None else "main thread: ?"]
        try:
            tasks = list(asyncio.all_tasks(self.loop))
        except RuntimeError:  # the loop's task set changed while it was read
            tasks = []
        for task in tasks[:30]:
            frames = task.get_stack(limit=1)
            where = f"{frames[-1].f_code.co_filename}:{frames[-1].f_lineno} in {frames[-1].f_code.co_name}" if frames else "?"
            lines.append(f"task {task.get_name()} ({getattr(task.get_coro(), '__qualname__', '?')}) at {where}")
        return "\n".join(lines)
