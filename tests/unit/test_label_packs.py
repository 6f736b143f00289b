"""The examples a worker makes go to the trainer packed, in the order that the trainer's
periods need: every example before the watermark or forget that follows it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from models.examples import Examples, Forget, ReviewExample, SegmentExample, Watermark, decode_example, encode_example, examples_in, pack, unpack
from streams.runtime.agents import batched
from streams.runtime.agents.batched import BatchIngest


def ingest(pack: int) -> Any:
    """A BatchIngest with only what sending labels needs; what it sends is recorded."""
    ingest: Any = object.__new__(BatchIngest)
    ingest.settings = SimpleNamespace(model_labels_pack=pack, topic_model_labels="model-labels")
    ingest.period_ms = 1000
    ingest.labels, ingest.labels_text = [], 0
    ingest.sent = []
    ingest._emit = lambda topic, key, value, partition=None, headers=None: ingest.sent.append((topic, partition, decoded(value)))
    return ingest


def decoded(value: bytes) -> Any:
    """A record as sent: a pack as the list of its examples."""
    record = decode_example(value)
    return examples_in(record) if isinstance(record, Examples) else record


def segment(i: int) -> SegmentExample:
    return SegmentExample(id=f"u{i}@{i}", at=i, x={"recency_days": float(i)})


def test_a_micro_batchs_examples_go_as_one_record_before_the_watermark_that_vouches_for_them() -> None:
    w = ingest(pack=512)
    for i in range(3):
        w._label(segment(i))
    assert w.sent == []
    w._watermark(SimpleNamespace(partition=2, marked=None), 5000)
    assert w.sent == [("model-labels", 0, [segment(0), segment(1), segment(2)]),
                      ("model-labels", 0, Watermark(partition=2, clock_ms=5000))]


def test_a_forget_goes_alone_after_the_examples_made_before_it() -> None:
    w = ingest(pack=512)
    w._label(segment(1))
    w._label(segment(2))
    w._label(Forget(user="u1"))
    w._label(segment(3))
    w._send_labels()  # the end of the micro-batch (_seal)
    assert [r for _, _, r in w.sent] == [[segment(1), segment(2)], Forget(user="u1"), segment(3)]


def test_a_full_pack_is_sent_at_once_and_review_texts_bound_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    w = ingest(pack=2)
    for i in range(5):
        w._label(segment(i))
    assert [len(r) for _, _, r in w.sent] == [2, 2]
    monkeypatch.setattr(batched, "LABELS_TEXT_MAX", 10)
    w = ingest(pack=512)
    w._label(ReviewExample(id="r1", at=1, text="x" * 6, rating=2))
    w._label(ReviewExample(id="r2", at=2, text="y" * 6, rating=5))
    assert [[e.id for e in r] for _, _, r in w.sent] == [["r1", "r2"]]


def test_pack_1_sends_one_example_per_record_as_older_trainers_read_them() -> None:
    w = ingest(pack=1)
    w._label(segment(1))
    w._label(segment(2))
    assert [r for _, _, r in w.sent] == [segment(1), segment(2)]


def test_an_example_a_trainer_cannot_read_costs_only_itself() -> None:
    """A newer worker's example (a newer version, a new kind) in a pack: the older trainer
    skips that one and learns the rest (before, one record per example lost one example)."""
    raw = encode_example(pack([segment(1), segment(2)]))
    raw = raw.replace(b'"v":1}', b'"v":2}', 1)  # the first item, of a newer format
    examples, skipped = unpack(decode_example(raw))
    assert examples == [segment(2)] and len(skipped) == 1 and "v2" in skipped[0]
    examples, skipped = unpack(decode_example(b'{"kind":"examples","items":[{"kind":"watermark","partition":1,"clock_ms":5}]}'))
    assert examples == [] and len(skipped) == 1  # a watermark is not an example: never in a pack


def test_a_pack_too_large_for_one_record_is_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka refuses a record above message.max.bytes at produce(), and the same records
    would make the same pack after a restart: a pack is halved until each record fits."""
    monkeypatch.setattr(batched, "LABELS_MAX_BYTES", 600)
    w = ingest(pack=512)
    for i in range(10):
        w._label(segment(i))
    w._send_labels()
    records = [r if isinstance(r, list) else [r] for _, _, r in w.sent]
    assert [e for r in records for e in r] == [segment(i) for i in range(10)] and len(records) > 1
    assert all(len(encode_example(pack(r) if len(r) > 1 else r[0])) <= 600 for r in records)
