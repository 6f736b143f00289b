"""A broker that goes away must not bury the operator's one useful line under client noise."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from streams.runtime.logs import RepeatLimiter, formatter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged() -> Iterator[tuple[Clock, io.StringIO]]:
    clock, out = Clock(), io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter("json"))
    handler.addFilter(RepeatLimiter(interval_s=30, clock=clock))
    loggers = [logging.getLogger(name) for name in ("aiokafka.consumer.fetcher", "streams.runtime.worker")]
    for log in loggers:
        log.addHandler(handler)
        log.propagate = False
        log.setLevel(logging.DEBUG)
    yield clock, out
    for log in loggers:
        log.removeHandler(handler)
        log.propagate = True
        log.setLevel(logging.NOTSET)


def messages(out: io.StringIO) -> list[str]:
    return [json.loads(line)["message"] for line in out.getvalue().splitlines()]


def test_a_client_error_repeated_for_a_minute_gives_one_line_per_interval_saying_how_many_were_dropped(logged) -> None:
    clock, out = logged
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    for second in range(61):
        clock.now = float(second)
        for node in (1, 2, 3):
            fetcher.error("Failed fetch messages from %s: %s", node, "Connection closed")
    assert messages(out) == [
        "Failed fetch messages from 1: Connection closed",
        "Failed fetch messages from 1: Connection closed (89 similar lines dropped in the last 30 s)",
        "Failed fetch messages from 1: Connection closed (89 similar lines dropped in the last 30 s)",
    ]


def test_our_own_lines_and_critical_lines_and_other_templates_always_pass(logged) -> None:
    clock, out = logged
    ours, theirs = logging.getLogger("streams.runtime.worker"), logging.getLogger("aiokafka.consumer.fetcher")
    for _ in range(3):
        ours.warning("dead-lettered %s", "clicks[0]@1")
        theirs.critical("fatal %s", "x")
        theirs.info("fetching %s", "y")
    theirs.error("Unable to update metadata from %s", [111])
    assert messages(out) == ["dead-lettered clicks[0]@1", "fatal x", "fetching y"] * 3 + ["Unable to update metadata from [111]"]
