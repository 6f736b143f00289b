"""A partition whose input the merge's back-pressure paused, given back by a rebalance and
taken again by the same worker, fetches again: librdkafka keeps a partition's pause across
its unassignment (librdkafka #1849), so the worker resumes what it paused before it gives a
partition back (``BatchIngest._unassign``); without that, the re-taken partition's new merge
would wait for the paused input for ever.

The pause is made to last: with ``RETENTION_TRAINER=separate`` and no trainer running, no
record's model snapshot is ready, so nothing is released and each partition's clicks fill
their share of its merge and stay paused (a resume needs records released). A second worker
joins and takes some partitions, then stops, and the first takes them back; only then does
the trainer start, and every click must be folded."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from streams.runtime.processes import WorkerProcess
from tests.integration.conftest import Pipeline, page_views

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

USERS = [f"pr{n}" for n in range(40)]
CLICKS = 1200
#: RETENTION_MERGE_MAX_RECORDS (its least): a partition's clicks pause at their share of it (100 / its 8 inputs)
CAP = 100
SEPARATE = {"RETENTION_TRAINER": "separate", "RETENTION_MERGE_MAX_RECORDS": str(CAP)}


def owned(worker: WorkerProcess) -> set[int] | None:
    """The partitions the worker's batched ingest last said it owns (None: not said yet)."""
    said = re.findall(r"batched ingest owns partitions \[([\d, ]*)\]", worker.log_file.read_text(errors="replace"))
    return {int(p) for p in said[-1].split(",") if p.strip()} if said else None


def processed(worker: WorkerProcess) -> float:
    """Inbound records handled (not counting re-keys; 0 while /metrics does not answer)."""
    return worker.total("retention_records_total") - worker.total("retention_records_total", result="rekeyed")


def folded(worker: WorkerProcess) -> float:
    """Every record the worker has handled, read strictly (a /metrics that does not answer fails)."""
    return sum(value for _, value in worker.samples("retention_records_total"))


def wait_until(condition: Callable[[], bool], what: str | Callable[[], str], workers: list[WorkerProcess],
               timeout: float = 60.0) -> None:
    """Until ``condition``; fails with ``what`` (a callable: said as it is then) past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        for worker in workers:
            assert worker.alive, worker.death()
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"{said}: not within {timeout:.0f} s; see {[str(w.log_file) for w in workers]}")
        time.sleep(0.2)


def test_a_partition_given_back_while_paused_fetches_again_when_taken_back(pipeline: Pipeline) -> None:
    publisher = pipeline.publisher()
    report = publisher.publish(page_views("pr", USERS, CLICKS, 3))
    publisher.close()
    assert report.failed == 0, report.errors
    everything = set(range(pipeline.settings.partitions))

    one = pipeline.worker("w1", **SEPARATE)
    one.wait_ready()
    wait_until(lambda: owned(one) == everything, "worker 1 owning every partition", [one])
    # every partition's clicks paused, and nothing released (so nothing resumed since)
    wait_until(lambda: one.total("retention_input_pauses_total", topic="clicks") >= len(everything), "the clicks paused", [one])
    assert folded(one) == 0

    two = pipeline.worker("w2", **SEPARATE)
    two.wait_ready()
    wait_until(lambda: (mine := owned(one)) is not None and (theirs := owned(two)) is not None
               and mine | theirs == everything and not mine & theirs and bool(mine) and bool(theirs),
               "the partitions split between the two workers", [one, two])
    moved = owned(two)
    assert moved and folded(one) == 0  # given back while still paused

    assert two.stop() == 0  # SIGTERM: graceful; worker 1 takes its partitions back
    wait_until(lambda: owned(one) == everything, "worker 1 owning every partition again", [one])

    pipeline.worker("trainer", command="trainer", **SEPARATE).wait_ready()  # the snapshots: records are released
    wait_until(lambda: processed(one) >= report.total, lambda: f"every record processed: {processed(one):.0f} of "
               f"{report.total} (the partitions taken back, paused when given back: {sorted(moved)})", [one], timeout=60)

    assert one.total("retention_records_total", result="ok") + one.total("retention_records_total", result="late") == CLICKS
    for user in USERS:
        status, profile = one.get_json(f"/users/{user}")
        assert status == 200 and profile["features"]["page_view_90d"] == CLICKS // len(USERS), (user, profile["features"])
