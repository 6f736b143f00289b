"""A crafted record on model-snapshots (one that would run code on every worker that
unpickled it) is refused by a running worker, which goes on processing events."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import msgspec
import pytest

from models.trainer import Snapshot, encode_snapshot
from streams.runtime.kafka import producer
from tests.crafted import crafted_models
from tests.integration.conftest import Pipeline
from tests.integration.test_operations import clicks
from tests.integration.test_pipeline import T0, publish

pytestmark = pytest.mark.integration


def crafted_records(marker: Path) -> dict[str, bytes]:
    """By the reason each is refused: written before signing, signed with another key, not a record."""
    snapshot = Snapshot(boundary=T0, version="evil", model_boundary=T0, learned={}, dropped={}, marks={},
                        models=crafted_models(marker))
    return {
        "unsigned": msgspec.msgpack.encode(msgspec.structs.replace(snapshot, v=1)),
        "bad_signature": encode_snapshot(snapshot, b"attacker-guess-" * 4),
        "malformed": b"\x80\x04cos\nsystem\n.",
    }


def test_a_crafted_snapshot_record_is_refused_and_the_worker_goes_on(pipeline: Pipeline, tmp_path: Path) -> None:
    worker = pipeline.worker()
    sent = publish(pipeline, clicks(range(20)))
    worker.wait_ready()
    worker.wait_processed(sent, timeout=120)

    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    out = producer(pipeline.settings)
    offsets: dict[str, int] = {}
    for reason, value in crafted_records(marker).items():
        out.produce(pipeline.settings.topic_model_snapshots, value=value, key=b"models/0", partition=0,
                    on_delivery=lambda err, msg, reason=reason: offsets.__setitem__(reason, msg.offset()))
    assert out.flush(30) == 0 and len(offsets) == 3

    deadline = time.monotonic() + 60
    while not all(worker.total("retention_model_snapshots_refused_total", reason=r) >= 1 for r in offsets):
        assert worker.alive and time.monotonic() < deadline, f"not refused in time; see {worker.log_file}"
        time.sleep(0.25)
    log = worker.log_file.read_text()
    topic = pipeline.settings.topic_model_snapshots
    assert (f"model snapshot {topic}[0]@{offsets['unsigned']} refused, unsigned: unsigned (written before signing; "
            "the trainer republishes); the worker goes on with the models it had") in log
    assert f"{topic}[0]@{offsets['bad_signature']} refused, bad_signature: signed with a key this worker does not accept" in log
    assert f"{topic}[0]@{offsets['malformed']} refused, malformed" in log
    assert worker.total("retention_model_snapshots_refused_total", reason="forbidden_global") == 0  # (exported at 0)

    more = publish(pipeline, clicks(range(20, 40)))
    worker.wait_processed(sent + more, timeout=120)  # still alive, still processing
    assert worker.get_json("/models")[0] == 200

    # a worker started now reads the crafted records first thing: refused the same, and it processes
    again = pipeline.worker("w2")
    again.wait_ready()
    deadline = time.monotonic() + 60
    while again.total("retention_model_snapshots_refused_total") < 3:
        assert again.alive and time.monotonic() < deadline, f"not refused in time; see {again.log_file}"
        time.sleep(0.25)
    late = publish(pipeline, clicks(range(40, 60)))
    deadline = time.monotonic() + 120
    while worker.total("retention_records_total") + again.total("retention_records_total") < sent + more + late:
        assert worker.alive and again.alive and time.monotonic() < deadline, f"see {again.log_file}"
        time.sleep(0.25)
    assert not marker.exists(), "the crafted pickle ran"
